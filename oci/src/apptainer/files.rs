//! sifrun's own texts for the base files of Apptainer's layout (the names,
//! modes and roles of `makeBaseEnv`, design §5.1; the contents are ours,
//! written for the same jobs).

/// `/.singularity.d/actions/exec`.
pub(super) const ACTION_EXEC: &str = "#!/bin/sh\n\
for sifrun_env in /.singularity.d/env/*.sh; do\n\
    if [ -r \"$sifrun_env\" ]; then . \"$sifrun_env\"; fi\n\
done\n\
unset sifrun_env\n\
exec \"$@\"\n";

/// `/.singularity.d/actions/run`.
pub(super) const ACTION_RUN: &str = "#!/bin/sh\n\
for sifrun_env in /.singularity.d/env/*.sh; do\n\
    if [ -r \"$sifrun_env\" ]; then . \"$sifrun_env\"; fi\n\
done\n\
unset sifrun_env\n\
if [ -x /.singularity.d/runscript ]; then\n\
    exec /.singularity.d/runscript \"$@\"\n\
fi\n\
echo \"no runscript in this image\" >&2\n\
exit 1\n";

/// `/.singularity.d/actions/shell`.
pub(super) const ACTION_SHELL: &str = "#!/bin/sh\n\
for sifrun_env in /.singularity.d/env/*.sh; do\n\
    if [ -r \"$sifrun_env\" ]; then . \"$sifrun_env\"; fi\n\
done\n\
unset sifrun_env\n\
if [ -x /bin/bash ]; then\n\
    exec /bin/bash --norc \"$@\"\n\
fi\n\
exec /bin/sh \"$@\"\n";

/// `/.singularity.d/actions/start`.
pub(super) const ACTION_START: &str = "#!/bin/sh\n\
for sifrun_env in /.singularity.d/env/*.sh; do\n\
    if [ -r \"$sifrun_env\" ]; then . \"$sifrun_env\"; fi\n\
done\n\
unset sifrun_env\n\
if [ -x /.singularity.d/startscript ]; then\n\
    exec /.singularity.d/startscript \"$@\"\n\
fi\n";

/// `/.singularity.d/actions/test`.
pub(super) const ACTION_TEST: &str = "#!/bin/sh\n\
for sifrun_env in /.singularity.d/env/*.sh; do\n\
    if [ -r \"$sifrun_env\" ]; then . \"$sifrun_env\"; fi\n\
done\n\
unset sifrun_env\n\
if [ -x /.singularity.d/test ]; then\n\
    exec /.singularity.d/test \"$@\"\n\
fi\n\
echo \"no test in this image\" >&2\n\
exit 0\n";

/// `/.singularity.d/env/01-base.sh`.
pub(super) const ENV_01_BASE: &str =
    "#!/bin/sh\n# Base environment of the image: nothing to set.\n";

/// `/.singularity.d/env/90-environment.sh`.
pub(super) const ENV_90_ENVIRONMENT: &str =
    "#!/bin/sh\n# The image's own environment settings go here.\n";

/// `/.singularity.d/env/95-apps.sh`.
pub(super) const ENV_95_APPS: &str =
    "#!/bin/sh\n# No SCIF apps in images converted from Docker/OCI.\n";

/// `/.singularity.d/env/99-base.sh`.
pub(super) const ENV_99_BASE: &str =
    "#!/bin/sh\n# Final base settings: none (the runtime sets the library path).\n";

/// `/.singularity.d/env/99-runtimevars.sh`.
pub(super) const ENV_99_RUNTIMEVARS: &str =
    "#!/bin/sh\n# Variables the runtime sets at start: none from the image.\n";

/// `/.singularity.d/startscript`.
pub(super) const STARTSCRIPT: &str = "#!/bin/sh\n";
