/* cmd_config_validate.c: `nodepool config-validate`: the strict check of
 * -c against upstream's schemas (validate.h), without connecting anywhere.
 * The validator logs "validating <path>" and every problem as
 * "file:line: key.path: message" itself; we only pass its exit code on
 * (0 valid, 1 invalid). The secure file is not validated, as upstream. */
#include "cli.h"
#include "validate.h"

int cmd_config_validate(struct cli *c)
{
	return config_validate_cmd(c->config_path);
}
