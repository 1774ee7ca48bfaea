#!/bin/sh
# Makes `mount -t fuse.mutant-mount`, /etc/fstab lines and systemd .mount units work: mount(8)
# runs FUSE file systems through fuse3's mount.fuse3, which starts `mutant-mount` from root's
# default PATH (mount(8) clears PATH). `cargo install` puts the binary in ~/.cargo/bin, which is
# not on it, so this copies the binary to /usr/local/bin. Run as root, after cargo install:
#
#   sudo contrib/install-mount-helper.sh [PATH-TO-BINARY]
#
# With --link it also makes /sbin/mount.fuse.mutant-mount, which mount(8) then runs directly
# (without mount.fuse3; options such as _netdev and nofail reach mutant-mount, which ignores
# them).
set -eu
link=0
if [ "${1:-}" = "--link" ]; then link=1; shift; fi
bin=${1:-$(command -v mutant-mount || echo "${SUDO_USER:+$(getent passwd "$SUDO_USER" | cut -d: -f6)}/.cargo/bin/mutant-mount")}
[ -x "$bin" ] || { echo "no mutant-mount binary at '$bin' (give its path)" >&2; exit 1; }
command -v mount.fuse3 >/dev/null || [ -x /sbin/mount.fuse3 ] || {
    echo "mount.fuse3 is missing: install fuse3 (apt-get install fuse3)" >&2; exit 1; }
install -m 755 "$bin" /usr/local/bin/mutant-mount
echo "installed /usr/local/bin/mutant-mount"
if [ "$link" = 1 ]; then
    ln -sf /usr/local/bin/mutant-mount /sbin/mount.fuse.mutant-mount
    echo "linked /sbin/mount.fuse.mutant-mount"
fi
