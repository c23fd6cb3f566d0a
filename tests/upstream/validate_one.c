/* validate_one.c: dev-time helper for compare-validate.sh: runs our
 * config_validate() on each file named and prints "<file> <rc>", with the
 * problems on stderr. Built by the script against libnodepool.a. */
#include <stdio.h>

#include "validate.h"

int main(int argc, char **argv)
{
	for (int i = 1; i < argc; i++) {
		strlist errors;
		strlist_init(&errors);
		int rc = config_validate(argv[i], &errors);
		for (size_t j = 0; j < errors.n; j++)
			fprintf(stderr, "  %s\n", errors.v[j]);
		strlist_free(&errors);
		printf("%s %d\n", argv[i], rc);
	}
	return 0;
}
