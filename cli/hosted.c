/* hosted.c: a provider's driver manager run by the CLI itself, for the
 * commands that must talk to a cloud (`delete --now`, `alien-image-list`),
 * as upstream's nodepoolcmd starts a provider manager from the local
 * config. The manager lives on the CLI's event loop; the commands start
 * an operation and run the loop until its callback has come (or a time
 * limit has passed: the op is then cancelled, or the manager stopped, so
 * its callback cannot come to a frame that has returned), then stop the
 * manager again. */
#include "cli.h"
#include "driver.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* How long work the driver started by itself (a static re-registration
 * after node_deleted) may take before the manager is stopped anyway. */
#define SETTLE_TIMEOUT_MS (30 * 1000)

int cli_host_provider(struct cli *c, const np_provider *p,
		      struct cli_hosted *h, char **err)
{
	char *why = NULL;

	memset(h, 0, sizeof(*h));
	h->drv = driver_find(p->driver);
	if (!h->drv) {
		*err = xasprintf("driver %s is not implemented by this "
				 "nodepool (%s)", p->driver ? p->driver :
				 "None", driver_names());
		return -1;
	}
	if (gethostname(h->hostname, sizeof(h->hostname)) != 0)
		snprintf(h->hostname, sizeof(h->hostname), "localhost");
	h->hostname[sizeof(h->hostname) - 1] = '\0';
	h->host.loop = c->loop;
	h->host.z = c->z;
	h->host.hostname = h->hostname;
	h->host.app = "cli";
	h->m = h->drv->start(&h->host, c->config, p, &why);
	if (!h->m) {
		*err = xasprintf("driver %s did not start: %s", h->drv->name,
				 why ? why : "unknown error");
		free(why);
		return -1;
	}
	return 0;
}

void cli_unhost_provider(struct cli *c, struct cli_hosted *h)
{
	long long deadline = now_ms() + SETTLE_TIMEOUT_MS;

	if (!h->m)
		return; /* stopped by a wait that timed out */
	while (h->drv->busy && h->drv->busy(h->m) && now_ms() < deadline)
		evloop_run_once(c->loop, 100);
	h->drv->stop(h->m);
	h->m = NULL;
}

/* The commands keep an op's completion state on their stack; after a time
 * limit the op would outlive their frame, and the CLI's loop runs on in
 * every synchronous ZooKeeper call after it. driver_wait() cancels the op
 * then, or stops the whole manager for a driver without a cancel hook, so
 * the callback never comes. */
bool cli_hosted_wait(struct cli *c, struct cli_hosted *h, np_op *op,
		     const bool *done, long timeout_ms)
{
	return driver_wait(c->loop, h->drv, &h->m, op, done, timeout_ms);
}
