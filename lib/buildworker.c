/* buildworker.c: a BuildWorker's pass: decides which images need a build and runs diskimage-builder.
 * (A placeholder so the builder links; the real pass lands here.) */
#include "builder.h"

void buildworker_pass(np_worker *w)
{
	(void)w;
}
