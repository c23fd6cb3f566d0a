/* janitor.c: the CleanupWorker's (janitor's) pass: deletes old builds and uploads, leaked images and local files.
 * (A placeholder so the builder links; the real pass lands here.) */
#include "builder.h"

void janitor_pass(np_worker *w)
{
	(void)w;
}
