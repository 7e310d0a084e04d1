# Build and install sifrun on a Slurm node.
#   make              build the sifrun binary and the SPANK plugin (release)
#   make install      install both (as root); then add the plugstack.conf line
#                     from docs/admin.md and restart slurmd
#   make uninstall
PREFIX    ?= /usr/local
BINDIR    ?= $(PREFIX)/bin
MULTIARCH := $(shell gcc -print-multiarch 2>/dev/null || echo x86_64-linux-gnu)
# Debian's slurm-wlm plugin directory (`scontrol show config | grep PluginDir`).
PLUGINDIR ?= /usr/lib/$(MULTIARCH)/slurm-wlm

all:
	cargo build --release --locked -p launcher -p spank-plugin

install: all
	install -D -m 0755 target/release/sifrun $(DESTDIR)$(BINDIR)/sifrun
	install -D -m 0755 target/release/libspank_sifrun.so $(DESTDIR)$(PLUGINDIR)/libspank_sifrun.so
	@echo "installed $(BINDIR)/sifrun and $(PLUGINDIR)/libspank_sifrun.so"
	@echo "enable it with this plugstack.conf line (see docs/admin.md):"
	@echo "  required $(PLUGINDIR)/libspank_sifrun.so launcher=$(BINDIR)/sifrun"

uninstall:
	rm -f $(DESTDIR)$(BINDIR)/sifrun $(DESTDIR)$(PLUGINDIR)/libspank_sifrun.so

.PHONY: all install uninstall
