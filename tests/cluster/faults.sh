# Faults on real pods, each under a bounded request loop through the gateway's NodePort. Sourced by e2e.sh once the
# release runs 2 TF Serving and 2 gateway replicas in client mode with the model on a PersistentVolume (the hostPath
# directory MODELS_PV on the node, so a new version can be placed while it serves); uses e2e.sh's NS, RELEASE, CHART,
# VALUES, URL, PANTS, NODE, MODELS_PV, stage and during, and the cluster helpers.
#   - a TF Serving pod deleted; the server process of another SIGKILLed (the container restarts);
#   - a gateway pod deleted; the eviction API refusing (429) to go below the gateway's PodDisruptionBudget;
#   - version 2 placed next to version 1 (TF Serving's file system poll swaps it in, then unloads 1);
#   - TF Serving scaled to 0 and back: meanwhile only 503 model_unavailable with Retry-After, then the same gateway
#     processes answer again;
#   - a helm upgrade to a gateway that cannot become ready fails while the old pods serve; helm rollback restores it.
# shellcheck shell=bash
TFS=app.kubernetes.io/component=tf-serving
GATEWAY=app.kubernetes.io/component=gateway

pods_of() { # SELECTOR: names of its Running pods
  kubectl -n "$NS" get pods -l "$1" --field-selector=status.phase=Running -o jsonpath='{.items[*].metadata.name}'
}
pod_state() { # SELECTOR: name=uid:restarts of its pods
  kubectl -n "$NS" get pods -l "$1" \
    -o jsonpath='{range .items[*]}{.metadata.name}={.metadata.uid}:{.status.containerStatuses[0].restartCount} {end}'
}
settled() { # 2 TF Serving and 2 gateway pods, all ready, none terminating
  kubectl -n "$NS" rollout status deploy --timeout 5m >/dev/null
  wait_for 180 "2 ready TF Serving and 2 ready gateway pods, no other" bash -c \
    "[ \"\$(kubectl -n $NS get pods -l '$TFS' -o jsonpath='{.items[*].status.containerStatuses[0].ready}')\" = 'true true' ] \
     && [ \"\$(kubectl -n $NS get pods -l '$GATEWAY' -o jsonpath='{.items[*].status.containerStatuses[0].ready}')\" = 'true true' ]"
}
versions_of() { # POD: clothing-model's versions as that TF Serving pod reports them: version:state ...
  curl -sf --max-time 5 "http://$(kubectl -n "$NS" get pod "$1" -o jsonpath='{.status.podIP}'):8501/v1/models/clothing-model" \
    | python3 -c 'import json,sys; print(" ".join(v["version"] + ":" + v["state"] for v in json.load(sys.stdin)["model_version_status"]))'
}

delete_and_replace() { # SELECTOR: deletes its first pod and waits until it is gone and replaced
  local pod
  pod="$(pods_of "$1" | cut -d' ' -f1)"
  kubectl -n "$NS" delete pod "$pod" --wait=false >/dev/null
  kubectl -n "$NS" wait --for=delete "pod/$pod" --timeout 3m >/dev/null
  settled
}
kill_tf_serving() { # SIGKILLs the server container of a TF Serving pod (outside the pod, through containerd)
  local pod id restarts
  pod="$(pods_of "$TFS" | cut -d' ' -f1)"
  restarts="$(kubectl -n "$NS" get pod "$pod" -o jsonpath='{.status.containerStatuses[0].restartCount}')"
  id="$(kubectl -n "$NS" get pod "$pod" -o jsonpath='{.status.containerStatuses[0].containerID}')"
  ctr --address "$CONTAINERD_SOCKET" -n k8s.io tasks kill --signal SIGKILL "${id#containerd://}"
  wait_for 120 "the killed TF Serving container to restart" bash -c \
    "[ \"\$(kubectl -n $NS get pod $pod -o jsonpath='{.status.containerStatuses[0].restartCount}')\" -gt $restarts ]"
  settled
}
evict() { # POD: asks the eviction API to evict it
  kubectl create --raw "/api/v1/namespaces/$NS/pods/$1/eviction" -f - \
    <<<"{\"apiVersion\": \"policy/v1\", \"kind\": \"Eviction\", \"metadata\": {\"name\": \"$1\", \"namespace\": \"$NS\"}}"
}
evict_gateways() { # evicts one gateway pod (allowed) and at once the other (429: the PDB allows one disruption)
  local first second refused
  read -r first second <<<"$(pods_of "$GATEWAY")"
  evict "$first" >/dev/null
  refused="$(evict "$second" 2>&1)" && die "evicting $second was allowed below the PodDisruptionBudget"
  echo "evicted $first; evicting $second at once: $refused"
  grep -q TooManyRequests <<<"$refused" || die "the eviction of $second was refused for another reason"
  kubectl -n "$NS" wait --for=delete "pod/$first" --timeout 3m >/dev/null
  settled
}
serves_version_2_only() { # POD
  local versions
  versions="$(versions_of "$1")"
  [[ $versions == *2:AVAILABLE* && $versions == *1:END* ]]
}
swap_in_version_2() { # places version 2 (atomically: a rename) and waits until every pod serves it and dropped 1
  local pod
  cp -a "$MODELS_PV/clothing-model/1" "$MODELS_PV/clothing-model/.2"
  mv "$MODELS_PV/clothing-model/.2" "$MODELS_PV/clothing-model/2"
  for pod in $(pods_of "$TFS"); do
    wait_for 60 "$pod to serve version 2 and unload 1" serves_version_2_only "$pod"
  done
}
tf_serving_gone_and_back() { # scales TF Serving to 0, lets the gateways answer without it, and back to 2
  kubectl -n "$NS" scale deploy -l "$TFS" --replicas=0 >/dev/null
  wait_for 120 "no TF Serving pod" bash -c "[ -z \"\$(kubectl -n $NS get pods -l '$TFS' -o name)\" ]"
  sleep 4  # every gateway answers without any model server
  kubectl -n "$NS" scale deploy -l "$TFS" --replicas=2 >/dev/null
  settled
  wait_for 120 "the gateways to answer again" curl -sf --max-time 10 -H 'Content-Type: image/jpeg' \
    --data-binary "@$PANTS" "$URL"
  sleep 5
}
broken_release() { # an upgrade whose gateway never becomes ready fails, the old pods serving; then helm rollback
  local revision
  revision="$(helm history "$RELEASE" -n "$NS" --max 1 -o json | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["revision"])')"
  # A contract the served model does not match: the gateway's startup probe (/readyz) never passes.
  if helm upgrade "$RELEASE" "$CHART" -f "$VALUES" -n "$NS" --reuse-values --wait --timeout 30s \
    --set model.outputName=no-such-output >/dev/null 2>"$NODE/broken-upgrade.err"; then
    die "helm upgrade to a gateway that cannot become ready succeeded"
  fi
  echo "helm upgrade failed as it should: $(tail -1 "$NODE/broken-upgrade.err")"
  kubectl -n "$NS" get pods -l "$GATEWAY" -o wide
  helm rollback "$RELEASE" "$revision" -n "$NS" --wait --timeout 5m >/dev/null
  settled
  helm history "$RELEASE" -n "$NS" --max 3
}

during tf-serving-pod-deleted delete_and_replace "$TFS"
during tf-serving-sigkill kill_tf_serving
during gateway-pod-deleted delete_and_replace "$GATEWAY"
during gateway-evictions evict_gateways
during hot-swap swap_in_version_2
echo "versions after the swap: $(for pod in $(pods_of "$TFS"); do echo -n "$pod [$(versions_of "$pod")] "; done)"
gateways_before="$(pod_state "$GATEWAY")"
DURING_FLAGS=--allow-unavailable during tf-serving-gone tf_serving_gone_and_back
[ "$(pod_state "$GATEWAY")" = "$gateways_before" ] || die "a gateway pod was replaced or restarted while TF Serving was gone"
python3 - "$NODE/tf-serving-gone-loop.json" <<'EOF' || die "the gateways did not recover from TF Serving's absence"
import json, sys
report = json.load(open(sys.argv[1]))
assert report["by_outcome"].get("unavailable", 0) > 0, "no request met the absence: the test did not test it"
assert report["ok_after_last_unavailable"] >= 20, report
EOF
during broken-release broken_release
stage "faults: every fault survived without an unexpected failed request"
