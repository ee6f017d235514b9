#!/bin/bash
# Install what tests/slurm needs, only what is missing (idempotent; quiet unless it fails). CI runs it
# before pytest. Slurm (slurmctld, slurmd, clients), munge, shellcheck, iproute2 (ip), util-linux
# (unshare, nsenter). No service is started or enabled: tests/slurm/cluster.sh runs its own daemons.
set -euo pipefail
export PATH=$PATH:/usr/sbin:/sbin
need=()
for pair in slurmctld:slurm-wlm slurmd:slurm-wlm sbatch:slurm-wlm munged:munge mungekey:munge \
  shellcheck:shellcheck ip:iproute2 unshare:util-linux nsenter:util-linux; do
  command -v "${pair%%:*}" >/dev/null 2>&1 || need+=("${pair#*:}")
done
[ "${#need[@]}" -eq 0 ] && exit 0
mapfile -t need < <(printf '%s\n' "${need[@]}" | sort -u)
if [ "$(id -u)" -ne 0 ]; then
  echo "tests/slurm/install.sh: ${need[*]} missing; run this script as root (apt-get)" >&2
  exit 1
fi
log=$(mktemp)
trap 'rm -f "$log"' EXIT
export DEBIAN_FRONTEND=noninteractive
# policy-rc.d 101: packages may not start their services (no init system in CI; harmless elsewhere)
rc_policy=/usr/sbin/policy-rc.d
own_policy=0
if [ ! -e "$rc_policy" ]; then printf '#!/bin/sh\nexit 101\n' > "$rc_policy"; chmod +x "$rc_policy"; own_policy=1; fi
ok=1
{ apt-get update -qq && apt-get install -y -qq --no-install-recommends "${need[@]}"; } >"$log" 2>&1 || ok=0
[ "$own_policy" = 1 ] && rm -f "$rc_policy"
if [ "$ok" = 0 ]; then
  cat "$log" >&2
  echo "tests/slurm/install.sh: apt-get install ${need[*]} failed" >&2
  exit 1
fi
echo "tests/slurm/install.sh: installed ${need[*]}"
