/* validate.h: `nodepool config-validate`: the strict check of a
 * nodepool.yaml against upstream's schemas (top level and every driver:
 * openstack, fake, static, aws, azure, gce, ibmvpc, kubernetes, openshift,
 * openshiftpods, metastatic, example, test) plus upstream's cross-checks
 * (openstack label/diskimage references, duplicate diskimage names,
 * missing parents). The secure file is not validated, as upstream.
 *
 * FOR THE CLI: the `config-validate` subcommand calls
 *
 *     int rc = config_validate_cmd(config_path);
 *
 * which logs "validating <path>" at INFO and every problem at ERROR under
 * upstream's logger name "nodepool.cmd.config_validator", and returns the
 * process exit code (0 valid, 1 invalid). */
#ifndef NP_VALIDATE_H
#define NP_VALIDATE_H

#include "util.h"

#define VALIDATE_LOGGER "nodepool.cmd.config_validator"

/* Validates PATH (after %(NODEPOOL_*) substitution). Each problem is
 * appended to ERRORS as "file:line: key.path: message" (or "YAML parsing
 * failed: ..." / "file: cannot open: ..."). Returns 0 when valid, 1 when
 * not. ERRORS must be initialised by the caller. */
int config_validate(const char *path, strlist *errors);

/* config_validate() plus logging, as described above. */
int config_validate_cmd(const char *path);

#endif
