/* test_validate.c: config-validate. Every file in
 * tests/fixtures/config/validate/ starts with "# expect: ok" or
 * "# expect: <text>" where <text> must appear in one of the reported
 * errors; good-* files must pass and bad-* files must fail. The same
 * verdicts were checked against upstream's validator with
 * tests/upstream/compare-validate.sh's helper. */
#include <dirent.h>
#include <stdlib.h>
#include <string.h>

#include "testlib.h"
#include "log.h"
#include "validate.h"

#define DIR_ "tests/fixtures/config/validate"

/* The text after "# expect: " on the first line, malloc'd. */
static char *expectation(const char *path)
{
	FILE *f = fopen(path, "r");
	char line[512] = "";
	if (!f)
		return NULL;
	if (!fgets(line, sizeof(line), f))
		line[0] = '\0';
	fclose(f);
	line[strcspn(line, "\n")] = '\0';
	if (strncmp(line, "# expect: ", 10) != 0)
		return NULL;
	return strdup(line + 10);
}

static void check_one(const char *name)
{
	char path[512];
	snprintf(path, sizeof(path), "%s/%s", DIR_, name);
	char *want = expectation(path);
	if (!want) {
		testlib_fail(__FILE__, __LINE__, "%s: no '# expect:' line",
		    name);
		return;
	}
	strlist errors;
	strlist_init(&errors);
	int rc = config_validate(path, &errors);
	bool ok_expected = strcmp(want, "ok") == 0;
	if (ok_expected != (strncmp(name, "good-", 5) == 0))
		testlib_fail(__FILE__, __LINE__, "%s: name and expectation "
		    "disagree", name);
	if (ok_expected && rc != 0) {
		testlib_fail(__FILE__, __LINE__, "%s: expected valid, got %s",
		    name, errors.n ? errors.v[0] : "(no message)");
	} else if (!ok_expected) {
		bool found = false;
		for (size_t i = 0; i < errors.n; i++)
			found = found || strstr(errors.v[i], want) != NULL;
		if (rc != 1 || !found)
			testlib_fail(__FILE__, __LINE__, "%s: expected '%s', "
			    "got rc %d: %s", name, want, rc,
			    errors.n ? errors.v[0] : "(no message)");
	}
	strlist_free(&errors);
	free(want);
}

TEST(fixtures_get_upstreams_verdict)
{
	setenv("NODEPOOL_VALIDATE_PORT", "8005", 1);
	DIR *d = opendir(DIR_);
	REQUIRE(d);
	strlist names;
	strlist_init(&names);
	struct dirent *e;
	while ((e = readdir(d)))
		if (str_ends_with(e->d_name, ".yaml"))
			strlist_add(&names, e->d_name);
	closedir(d);
	strlist_sort(&names);
	CHECK(names.n >= 30);
	for (size_t i = 0; i < names.n; i++)
		check_one(names.v[i]);
	strlist_free(&names);
}

TEST(errors_carry_file_and_line)
{
	strlist errors;
	strlist_init(&errors);
	CHECK_INT(config_validate(DIR_ "/bad-top-extra.yaml", &errors), 1);
	REQUIRE(errors.n == 1);
	CHECK_STR(errors.v[0], DIR_ "/bad-top-extra.yaml:2: unknown-key: "
	    "extra keys not allowed: 'unknown-key'");
	strlist_free(&errors);
}

TEST(missing_file_is_an_error)
{
	strlist errors;
	strlist_init(&errors);
	CHECK_INT(config_validate("/nonexistent/nodepool.yaml", &errors), 1);
	CHECK(errors.n == 1 && strstr(errors.v[0], "cannot open"));
	strlist_free(&errors);
}

TEST(unsubstituted_placeholder_is_a_yaml_error)
{
	unsetenv("NODEPOOL_VALIDATE_PORT");
	strlist errors;
	strlist_init(&errors);
	CHECK_INT(config_validate(DIR_ "/good-openstack.yaml", &errors), 1);
	CHECK(errors.n == 1 && strstr(errors.v[0], "YAML parsing failed"));
	strlist_free(&errors);
}

TEST(cmd_wrapper_returns_exit_code)
{
	setenv("NODEPOOL_VALIDATE_PORT", "8005", 1);
	FILE *devnull = fopen("/dev/null", "w");
	log_set_stream(devnull);
	CHECK_INT(config_validate_cmd(DIR_ "/good-static.yaml"), 0);
	CHECK_INT(config_validate_cmd(DIR_ "/bad-static-cloud.yaml"), 1);
	log_set_stream(stderr);
	fclose(devnull);
}

RUN_TESTS()
