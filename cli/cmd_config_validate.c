/* cmd_config_validate.c: `nodepool config-validate`: check -c without
 * connecting anywhere; exit 0 when valid, 1 when not.
 *
 * STUB: the strict per-driver schema check (upstream's ConfigValidator)
 * belongs to the config engineer's validator, which has not landed yet;
 * until then this runs the runtime loader, which checks structure, types
 * and references but not every schema rule. */
#include "cli.h"
#include "log.h"

#include <stdlib.h>

int cmd_config_validate(struct cli *c)
{
	char *err = NULL;
	np_config *cfg = config_load(c->config_path, c->secure_path, &err);

	if (!cfg) {
		log_error("nodepool.cmd.ConfigValidator", "%s",
			  err ? err : "invalid configuration");
		free(err);
		return 1;
	}
	config_free(cfg);
	return 0;
}
