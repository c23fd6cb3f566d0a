/* uploadworker.c: an UploadWorker's pass: uploads the newest ready build of every image to every provider that lists it.
 * (A placeholder so the builder links; the real pass lands here.) */
#include "builder.h"

void uploadworker_pass(np_worker *w)
{
	(void)w;
}
