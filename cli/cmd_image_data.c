/* cmd_image_data.c: `nodepool export-image-data <path>` and
 * `import-image-data <path>`: back up and restore the builds, uploads and
 * pause flags as one JSON object of znode path -> data. The two commands
 * are the two halves of one file format, so they live together. */
#include "cli.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static int write_all(int fd, const char *s, size_t len)
{
	while (len) {
		ssize_t w = write(fd, s, len);
		if (w < 0) {
			if (errno == EINTR)
				continue;
			return -1;
		}
		s += w;
		len -= (size_t)w;
	}
	return 0;
}

int cmd_export_image_data(struct cli *c)
{
	const char *path = cli_arg(c, "path");
	json_t *data;
	char *text;
	int fd, rc;

	rc = store_export_image_data(c->z, &data);
	if (rc != ZOK) {
		json_decref(data);
		return cli_zk_error("Exporting image data", rc);
	}
	text = np_json_dumps(data, false);
	json_decref(data);
	/* Image data names cloud resources: readable by the owner only. */
	fd = open(path, O_CREAT | O_WRONLY | O_TRUNC, 0600);
	if (fd < 0 || write_all(fd, text, strlen(text)) < 0) {
		fprintf(stderr, "Cannot write %s: %s\n", path, strerror(errno));
		if (fd >= 0)
			close(fd);
		free(text);
		return 1;
	}
	close(fd);
	free(text);
	return 0;
}

int cmd_import_image_data(struct cli *c)
{
	const char *path = cli_arg(c, "path");
	json_error_t jerr;
	char *err = NULL;
	json_t *data;
	int rc;

	data = json_load_file(path, 0, &jerr);
	if (!data) {
		fprintf(stderr, "Cannot read %s: %s (line %d)\n", path,
			jerr.text, jerr.line);
		return 1;
	}
	rc = store_import_image_data(c->z, data, &err);
	json_decref(data);
	if (err) {
		fprintf(stderr, "%s: %s\n", path, err);
		free(err);
		return 1;
	}
	return rc == ZOK ? 0 : cli_zk_error("Importing image data", rc);
}
