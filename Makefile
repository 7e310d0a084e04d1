# Build and install sifrun on a Slurm node.
#   make              build the sifrun binary, the lean holder sifrun-hold
#                     (which the plugin runs beside sifrun) and the SPANK plugin
#   make install      install them (as root); then add the plugstack.conf line
#                     from docs/admin.md and restart slurmd
#   make uninstall
#
# The plugin loads only into the Slurm major.minor whose headers it was built
# against. By default that is the system's Slurm (Debian's slurm-wlm and
# libslurm-dev). For a Slurm installed under its own prefix:
#   make install SLURM=/opt/slurm-25.11
# takes <slurm/spank.h> and slurm_version.h from $(SLURM)/include, builds in
# its own target directory (target/slurm-<version>, so the builds for several
# series do not replace each other) and installs the plugin into that Slurm's
# PluginDir ($(SLURM)/lib/slurm).
PREFIX    ?= /usr/local
BINDIR    ?= $(PREFIX)/bin
MULTIARCH := $(shell gcc -print-multiarch 2>/dev/null || echo x86_64-linux-gnu)
SLURM     ?=

ifeq ($(strip $(SLURM)),)
# Debian's slurm-wlm plugin directory (`scontrol show config | grep PluginDir`).
PLUGINDIR ?= /usr/lib/$(MULTIARCH)/slurm-wlm
TARGETDIR ?= target
else
# major.minor from SLURM_VERSION_NUMBER (0x190b07 -> 25.11).
SLURM_VERSION := $(shell v=$$(sed -n 's/^\#define SLURM_VERSION_NUMBER \(0x[0-9a-fA-F]*\).*/\1/p' \
	$(SLURM)/include/slurm/slurm_version.h 2>/dev/null); [ -n "$$v" ] && printf '%d.%02d' $$((v >> 16)) $$(((v >> 8) & 255)))
ifeq ($(SLURM_VERSION),)
$(error SLURM=$(SLURM): no $(SLURM)/include/slurm/slurm_version.h)
endif
PLUGINDIR ?= $(SLURM)/lib/slurm
TARGETDIR ?= target/slurm-$(SLURM_VERSION)
endif

all: plugin
	cargo build --release --locked -p launcher
	$(MAKE) holder

# The lean holder the plugin runs for steps without an ECL and with a local
# image (no OpenSSL, no sequoia): a build of its own, as the features of one
# cargo build unify.
holder:
	cargo build --release --locked -p launcher --no-default-features --features holder-bin --bin sifrun-hold

# The plugin only (for the Slurm SLURM names, or the system's).
plugin:
	$(if $(strip $(SLURM)),SIFRUN_SLURM_PREFIX=$(SLURM),env -u SIFRUN_SLURM_PREFIX) \
		cargo build --release --locked -p spank-plugin --target-dir $(TARGETDIR)

install: all
	install -D -m 0755 target/release/sifrun $(DESTDIR)$(BINDIR)/sifrun
	install -D -m 0755 target/release/sifrun-hold $(DESTDIR)$(BINDIR)/sifrun-hold
	install -D -m 0755 $(TARGETDIR)/release/libspank_sifrun.so $(DESTDIR)$(PLUGINDIR)/libspank_sifrun.so
	@echo "installed $(BINDIR)/sifrun, $(BINDIR)/sifrun-hold and $(PLUGINDIR)/libspank_sifrun.so"
	@echo "enable it with this plugstack.conf line (see docs/admin.md; 'required', never 'optional'):"
	@echo "  required $(PLUGINDIR)/libspank_sifrun.so launcher=$(BINDIR)/sifrun"

# The path of the plugin `make` builds (for scripts: tests/run-all).
plugin-path:
	@echo $(TARGETDIR)/release/libspank_sifrun.so

uninstall:
	rm -f $(DESTDIR)$(BINDIR)/sifrun $(DESTDIR)$(BINDIR)/sifrun-hold $(DESTDIR)$(PLUGINDIR)/libspank_sifrun.so

.PHONY: all plugin holder install uninstall plugin-path

# Debian package for the Slurm SLURM names, or Debian's without SLURM=
# (packaging/make-deb, dpkg-deb): target/deb/sifrun-slurm<series>_<version>_<arch>.deb
# with /usr/bin/sifrun and /usr/bin/sifrun-hold, the plugin in PLUGINDIR, a commented
# /etc/slurm/plugstack.conf.d/sifrun.conf and the docs (docs/admin.md, Install).
DEBDIR ?= target/deb

deb: all
	packaging/make-deb "$(SLURM)" "$(PLUGINDIR)" "$(TARGETDIR)/release/libspank_sifrun.so" target/release/sifrun "$(DEBDIR)"

.PHONY: deb
