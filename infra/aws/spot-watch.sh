#!/usr/bin/env bash
# Turns an EC2 spot interruption notice into Ray's preemption notice for this node (infra/aws/cluster.yaml starts it
# on every GPU worker, docs/cluster.md "Spot nodes").
#
# EC2 announces a reclaim about two minutes ahead in the instance metadata (`spot/instance-action`, 404 until
# then). This asks the GCS to drain the node for preemption with that deadline, the call Ray's autoscaler makes:
# Ray Train's preemption watcher hands the notice to every worker of a trial on the node, they write a
# just-in-time checkpoint at the next step boundary, and the trial restarts from it on other nodes at the deadline
# within `max_preemptions` (not `max_failures`). Without this, a reclaim is a hard node loss: the trial restarts
# from its last periodic checkpoint.
#
#   spot-watch.sh [HEAD_ADDRESS]      # default $RAY_HEAD_IP:6379; IMDS_URL and POLL_S override the endpoint/poll
set -euo pipefail

address="${1:-${RAY_HEAD_IP:-127.0.0.1}:6379}"
imds="${IMDS_URL:-http://169.254.169.254}"
poll_s="${POLL_S:-5}"
ray_exe="${RAY_EXE:-ray}"
# Seconds kept back from EC2's deadline: the node must still be up when Ray Train restarts the group elsewhere.
margin_s=10

while true; do
    # IMDSv2: a session token first (the launcher's instances may require it).
    token="$(wget -q -O - --method=PUT --header='X-aws-ec2-metadata-token-ttl-seconds: 300' "$imds/latest/api/token" || true)"
    if action="$(wget -q -O - --header="X-aws-ec2-metadata-token: $token" "$imds/latest/meta-data/spot/instance-action")"; then
        # {"action": "terminate", "time": "2026-12-01T15:02:00Z"}
        when="$(printf '%s' "$action" | sed -n 's/.*"time" *: *"\([^"]*\)".*/\1/p')"
        remaining=$(( $(date -u -d "$when" +%s) - $(date -u +%s) - margin_s ))
        (( remaining < 0 )) && remaining=0
        echo "spot interruption notice: $action; draining this node for preemption, deadline in ${remaining}s"
        exec "$ray_exe" drain-node --address="$address" --reason=DRAIN_NODE_REASON_PREEMPTION \
            --reason-message="EC2 spot interruption: $action" --deadline-remaining-seconds="$remaining"
    fi
    sleep "$poll_s"
done
