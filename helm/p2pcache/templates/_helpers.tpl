{{- define "p2pcache.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 40 | trimSuffix "-" }}
{{- end }}

{{/* Kept to 40 characters so "<fullname>-worker-headless" and pod names stay DNS labels. Service
names must be DNS-1035 labels, which Helm's release names need not be ("rel.dots", "1cache"). */}}
{{- define "p2pcache.fullname" -}}
{{- $fullname := "" }}
{{- if .Values.fullnameOverride }}
{{- $fullname = .Values.fullnameOverride | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- $fullname = .Release.Name | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- $fullname = printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- if not (regexMatch "^[a-z]([-a-z0-9]*[a-z0-9])?$" $fullname) }}
{{- fail (printf "the release name %q (with nameOverride %q, fullnameOverride %q) gives the Service name %q, not a DNS-1035 label: use names that start with a letter and hold only a-z, 0-9 and '-', or set fullnameOverride to one" .Release.Name .Values.nameOverride .Values.fullnameOverride $fullname) }}
{{- end }}
{{- $fullname }}
{{- end }}

{{- define "p2pcache.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "p2pcache.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* Selector labels of one component: call with (dict "ctx" $ "component" "worker"). */}}
{{- define "p2pcache.selectorLabels" -}}
app.kubernetes.io/name: {{ include "p2pcache.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "p2pcache.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{- define "p2pcache.masterName" -}}{{ include "p2pcache.fullname" . }}-master{{- end }}
{{- define "p2pcache.workerName" -}}{{ include "p2pcache.fullname" . }}-worker{{- end }}
{{- define "p2pcache.headlessName" -}}{{ include "p2pcache.fullname" . }}-worker-headless{{- end }}

{{- define "p2pcache.scheme" -}}{{ if .Values.tls.enabled }}https{{ else }}http{{ end }}{{- end }}

{{- define "p2pcache.masterURL" -}}
{{- printf "%s://%s.%s.svc.%s:%d" (include "p2pcache.scheme" .) (include "p2pcache.masterName" .) .Release.Namespace .Values.clusterDomain (int .Values.master.port) }}
{{- end }}

{{/* Name of the Secret holding the cluster secret, or "" for an open cluster. */}}
{{- define "p2pcache.clusterSecretName" -}}
{{- if .Values.clusterSecret.enabled }}
{{- default (printf "%s-cluster" (include "p2pcache.fullname" .)) .Values.clusterSecret.existingSecret }}
{{- end }}
{{- end }}

{{/* The env entry that hands the cluster secret to the master and the workers. */}}
{{- define "p2pcache.clusterSecretEnv" -}}
{{- with include "p2pcache.clusterSecretName" . -}}
- name: P2PCACHE_CLUSTER_SECRET
  valueFrom:
    secretKeyRef:
      name: {{ . }}
      key: {{ $.Values.clusterSecret.key }}
{{- end }}
{{- end }}

{{/* The cluster secret as the Secret's data holds it (base64), or "": the Secret in the cluster
(the user's `existingSecret`, or the chart's own, kept across `helm upgrade`), else for the chart's own
a new random value. Made once per render and kept on the root context: the chart's Secret and every
checksum of it must see the same value, and `randAlphaNum` gives another at each call. "" when there
is none or the user's cannot be looked up (`helm template`). Call with the root context. */}}
{{- define "p2pcache.clusterSecretData" -}}
{{- if not (hasKey . "p2pcacheClusterSecretData") }}
{{- $data := "" }}
{{- if .Values.clusterSecret.enabled }}
{{- $found := lookup "v1" "Secret" .Release.Namespace (include "p2pcache.clusterSecretName" .) }}
{{- $data = dig "data" .Values.clusterSecret.key "" $found }}
{{- if and (not $data) (not .Values.clusterSecret.existingSecret) }}
{{- $data = randAlphaNum 64 | b64enc }}
{{- end }}
{{- end }}
{{- $_ := set . "p2pcacheClusterSecretData" $data }}
{{- end }}
{{- get . "p2pcacheClusterSecretData" }}
{{- end }}

{{/* A checksum of the cluster secret's value, for the master's and the workers' pod annotations: a
new value (the chart's Secret deleted and made again, or the user's rotated, then `helm upgrade`)
restarts them all, rather than leaving running pods on the old value to be refused by the next
pod that starts; an upgrade that keeps the value restarts none. Empty when there is no value to
check (`helm template` with the user's Secret). */}}
{{- define "p2pcache.clusterSecretChecksum" -}}
{{- with include "p2pcache.clusterSecretData" . }}{{ sha256sum . }}{{ end }}
{{- end }}

{{/* --tls-* args of the master and the workers: --tls-ca is the CA the workers verify peers and
the master with, and the master verifies the workers with (preload, status). */}}
{{- define "p2pcache.tlsArgs" -}}
{{- $tls := .Values.tls }}
{{- if $tls.enabled -}}
- --tls-cert={{ $tls.mountPath }}/tls.crt
- --tls-key={{ $tls.mountPath }}/tls.key
{{- if $tls.caKey }}
- --tls-ca={{ $tls.mountPath }}/{{ $tls.caKey }}
{{- end }}
{{- end }}
{{- end }}

{{- define "p2pcache.tlsSecret" -}}
{{- required "tls.existingSecret is required with tls.enabled: a kubernetes.io/tls Secret (tls.crt, tls.key)" .Values.tls.existingSecret }}
{{- end }}

{{- define "p2pcache.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "p2pcache.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* Name of the Secret holding AWS keys, or "" when none is used. */}}
{{- define "p2pcache.s3SecretName" -}}
{{- if .Values.s3.existingSecret }}
{{- .Values.s3.existingSecret }}
{{- else if .Values.s3.accessKeyId }}
{{- include "p2pcache.fullname" . }}-s3
{{- end }}
{{- end }}

{{/* A size in the CLI format ("20GiB", "500M", "1Gi", "4096") as a byte count, at most 2^63-1
like every size flag of p2pcache; call with (list "cache.size" .Values.cache.size). Helm's
integers are 64-bit and wrap silently: the digits are checked before they are multiplied. */}}
{{- define "p2pcache.bytes" -}}
{{- $name := index . 0 }}
{{- $size := toString (index . 1) }}
{{- $units := dict "" 1 "K" 1000 "KB" 1000 "M" 1000000 "MB" 1000000 "G" 1000000000 "GB" 1000000000 "T" 1000000000000 "TB" 1000000000000 "Ki" 1024 "KiB" 1024 "Mi" 1048576 "MiB" 1048576 "Gi" 1073741824 "GiB" 1073741824 "Ti" 1099511627776 "TiB" 1099511627776 }}
{{- $unit := regexReplaceAll "^[0-9]+" $size "" }}
{{- $number := trimSuffix $unit $size }}
{{- if or (not (regexMatch "^[0-9]+$" $number)) (not (hasKey $units $unit)) }}
{{- fail (printf "%s: invalid size %q: use an integer with an optional unit, e.g. 20GiB, 500M or 4096" $name $size) }}
{{- end }}
{{- $digits := regexReplaceAll "^0+" $number "" | default "0" }}
{{- $max := 9223372036854775807 }}
{{- if or (gt (len $digits) 19) (and (eq (len $digits) 19) (gt $digits (toString $max))) (gt (atoi $digits) (div $max (get $units $unit))) }}
{{- fail (printf "%s: %s is more than 2^63-1 bytes, the largest size p2pcache takes" $name $size) }}
{{- end }}
{{- mul (atoi $digits) (get $units $unit) }}
{{- end }}

{{/* The master's --chunk-size: cluster.chunkSize in bytes, within the master's bounds (p2pcache/ring.py). */}}
{{- define "p2pcache.chunkBytes" -}}
{{- $bytes := include "p2pcache.bytes" (list "cluster.chunkSize" .Values.cluster.chunkSize) | atoi }}
{{- if or (lt $bytes 65536) (gt $bytes 1073741824) }}
{{- fail (printf "cluster.chunkSize: %s must be from 64KiB to 1GiB (the master's --chunk-size)" (toString .Values.cluster.chunkSize)) }}
{{- end }}
{{- $bytes }}
{{- end }}

{{/* Worker --capacity: cache.capacityPercent of cache.size, in bytes (computed without overflow),
at least the 2 chunks the master asks of every worker it registers. */}}
{{- define "p2pcache.capacityBytes" -}}
{{- $size := include "p2pcache.bytes" (list "cache.size" .Values.cache.size) | atoi }}
{{- $percent := int .Values.cache.capacityPercent }}
{{- $capacity := add (mul (div $size 100) $percent) (div (mul (mod $size 100) $percent) 100) }}
{{- $chunk := include "p2pcache.chunkBytes" . | atoi }}
{{- if lt $capacity (mul 2 $chunk) }}
{{- fail (printf "cache.size: %s at cache.capacityPercent %d gives each worker --capacity=%d bytes, less than 2 chunks of cluster.chunkSize %s (%d bytes): the master would refuse every worker" (toString .Values.cache.size) $percent $capacity (toString .Values.cluster.chunkSize) (mul 2 $chunk)) }}
{{- end }}
{{- $capacity }}
{{- end }}

{{- define "p2pcache.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
fsGroup: 10001
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{- define "p2pcache.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: [ALL]
{{- end }}

{{/* Name of the Secret holding the reader keys file, or "" when readers are not checked. */}}
{{- define "p2pcache.clientKeysSecretName" -}}
{{- if .Values.clientKeys.existingSecret }}
{{- .Values.clientKeys.existingSecret }}
{{- else if .Values.clientKeys.keys }}
{{- include "p2pcache.fullname" . }}-client-keys
{{- end }}
{{- end }}

{{/* The key of that Secret holding the file. */}}
{{- define "p2pcache.clientKeysSecretKey" -}}
{{- if .Values.clientKeys.existingSecret }}{{ .Values.clientKeys.existingSecretKey }}{{ else }}client-keys{{ end }}
{{- end }}

{{/* The reader keys file (worker --client-keys) from clientKeys.keys. */}}
{{- define "p2pcache.clientKeysFile" -}}
{{- $seen := dict }}
{{- range .Values.clientKeys.keys }}
{{- if hasKey $seen .accessKeyId }}
{{- fail (printf "clientKeys.keys: accessKeyId %q is listed twice: give each key id once (the workers refuse a keys file that repeats one)" .accessKeyId) }}
{{- end }}
{{- $_ := set $seen .accessKeyId true }}
{{- end -}}
# ACCESS_KEY_ID SECRET_ACCESS_KEY [bucket,bucket...], from the chart's clientKeys.keys
{{- range .Values.clientKeys.keys }}
{{ .accessKeyId }} {{ .secretAccessKey }}{{ with get . "buckets" }} {{ join "," . }}{{ end }}
{{- end }}
{{ end }}

{{/* The worker's --serve-processes: worker.cpus, or with 0 the CPU limit of worker.resources, else
its CPU request, rounded up (1 without either). Not `auto`: without a CPU limit the pod has no
cgroup quota, and auto would start one serving process per CPU of the node, each ~40-60 MiB, far
more than a request of 500m and its memory limit allow. */}}
{{- define "p2pcache.serveProcesses" -}}
{{- $cpus := int .Values.worker.cpus }}
{{- if not $cpus }}
{{- $r := .Values.worker.resources }}
{{- $cpu := toString (coalesce (dig "limits" "cpu" "" $r) (dig "requests" "cpu" "" $r) "1") }}
{{- if not (regexMatch "^[0-9]+(\\.[0-9]+)?m?$" $cpu) }}
{{- fail (printf "worker.resources: CPU %q: give it as cores (2, 1.5) or millicores (500m), or set worker.cpus" $cpu) }}
{{- end }}
{{- $cores := ternary (divf (trimSuffix "m" $cpu) 1000) (float64 $cpu) (hasSuffix "m" $cpu) }}
{{- $cpus = max 1 (min 256 (ceil $cores | int)) }}
{{- end }}
{{- $cpus }}
{{- end }}

{{/* The worker's resources: worker.cpus (if set) is its CPU request and limit. */}}
{{- define "p2pcache.workerResources" -}}
{{- $r := deepCopy .Values.worker.resources -}}
{{- with .Values.worker.cpus -}}
{{- $_ := set $r "requests" (merge (dict "cpu" (toString .)) (default dict $r.requests)) -}}
{{- $_ := set $r "limits" (merge (dict "cpu" (toString .)) (default dict $r.limits)) -}}
{{- end -}}
{{- toYaml $r -}}
{{- end -}}

{{/* A Kubernetes memory quantity ("2Gi", "512Mi", "2G", "1.5Gi", "2000000000") in bytes; call with
(list "worker.resources.limits.memory" $quantity). */}}
{{- define "p2pcache.memoryBytes" -}}
{{- $name := index . 0 }}
{{- $quantity := toString (index . 1) }}
{{- $units := dict "" 1 "k" 1000 "M" 1000000 "G" 1000000000 "T" 1000000000000 "Ki" 1024 "Mi" 1048576 "Gi" 1073741824 "Ti" 1099511627776 }}
{{- if not (regexMatch "^[0-9]+(\\.[0-9]+)?(k|M|G|T|Ki|Mi|Gi|Ti)?$" $quantity) }}
{{- fail (printf "%s: memory %q: give it as bytes with an optional unit, e.g. 2Gi, 512Mi or 2G" $name $quantity) }}
{{- end }}
{{- $unit := regexReplaceAll "^[0-9.]+" $quantity "" }}
{{- mulf (float64 (trimSuffix $unit $quantity)) (get $units $unit) | int64 }}
{{- end }}

{{/* A cache in memory (cache.emptyDir.medium Memory) is tmpfs, whose pages count against the pod's
memory limit: the cache and the worker's processes (the coordinator and one per serving process,
up to 150Mi each under load: docs/benchmarks.md, scenario 5) must fit in it, or the worker is
OOM-killed as the cache fills, and again at each restart on the same full emptyDir. */}}
{{- define "p2pcache.memoryCacheFits" -}}
{{- $limit := dig "limits" "memory" "" .Values.worker.resources }}
{{- if and (eq .Values.cache.mode "emptyDir") (eq .Values.cache.emptyDir.medium "Memory") $limit }}
{{- $limitBytes := include "p2pcache.memoryBytes" (list "worker.resources.limits.memory" $limit) | atoi }}
{{- $processes := add 1 (include "p2pcache.serveProcesses" . | atoi) }}
{{- $need := add (include "p2pcache.bytes" (list "cache.size" .Values.cache.size) | atoi) (mul $processes 157286400) }}
{{- if gt $need $limitBytes }}
{{- fail (printf "cache.emptyDir.medium Memory: cache.size %s and %d worker processes (150Mi each) need %dMi, more than worker.resources.limits.memory %s: a cache in memory counts against the pod's memory limit, and the worker would be OOM-killed as it fills; lower cache.size or raise the limit" (toString .Values.cache.size) $processes (div (add $need 1048575) 1048576) (toString $limit)) }}
{{- end }}
{{- end }}
{{- end }}

{{/* A Kubernetes quantity as the API server gives it back (canonical: an integer and a suffix, "200Gi",
"500G", "214748364800") in bytes, or "" for another form. */}}
{{- define "p2pcache.quantityBytes" -}}
{{- $quantity := toString . }}
{{- $units := dict "" 1 "k" 1000 "M" 1000000 "G" 1000000000 "T" 1000000000000 "P" 1000000000000000 "Ki" 1024 "Mi" 1048576 "Gi" 1073741824 "Ti" 1099511627776 "Pi" 1125899906842624 }}
{{- if regexMatch "^[0-9]{1,15}(k|M|G|T|P|Ki|Mi|Gi|Ti|Pi)?$" $quantity }}
{{- $unit := regexReplaceAll "^[0-9]+" $quantity "" }}
{{- mul (trimSuffix $unit $quantity | atoi) (get $units $unit) }}
{{- end }}
{{- end }}

{{/* Kubernetes refuses to update a StatefulSet's volumeClaimTemplates ("Forbidden: updates to
statefulset spec for fields other than ..."): a `helm upgrade` that changes cache.mode to or from
volumeClaimTemplate, or in that mode cache.size or the claims' class or access modes, would fail there,
after the other objects changed. The workers' StatefulSet in the cluster (`lookup`; none under `helm
template` or at install) is compared with the values, and such a change refused in one line saying what
Kubernetes documents instead: resize the PVCs, delete the StatefulSet keeping its pods
(--cascade=orphan), then upgrade. Call with the root context. */}}
{{- define "p2pcache.claimTemplateKept" -}}
{{- $name := include "p2pcache.workerName" . }}
{{- $found := lookup "apps/v1" "StatefulSet" .Release.Namespace $name }}
{{- if $found }}
{{- $orphan := printf "delete the StatefulSet and keep its pods (kubectl -n %s delete statefulset %s --cascade=orphan), then helm upgrade" .Release.Namespace $name }}
{{- $claim := dict }}
{{- range (dig "spec" "volumeClaimTemplates" list $found) }}
{{- if eq (dig "metadata" "name" "" .) "cache" }}{{ $claim = . }}{{ end }}
{{- end }}
{{- $was := ternary "volumeClaimTemplate" "emptyDir or hostPath" (not (empty $claim)) }}
{{- range (dig "spec" "template" "spec" "volumes" list $found) }}
{{- if and (eq .name "cache") (hasKey . "emptyDir") }}{{ $was = "emptyDir" }}{{ end }}
{{- if and (eq .name "cache") (hasKey . "hostPath") }}{{ $was = "hostPath" }}{{ end }}
{{- end }}
{{- $mode := .Values.cache.mode }}
{{- if and (ne $mode $was) (or (eq $mode "volumeClaimTemplate") (eq $was "volumeClaimTemplate")) }}
{{- fail (printf "cache.mode: %s, for workers made with %s, changes the StatefulSet's volumeClaimTemplates, which Kubernetes does not let an upgrade change: %s%s" $mode $was $orphan (ternary " (the workers' PVCs stay until you delete them)" "" (eq $was "volumeClaimTemplate"))) }}
{{- end }}
{{- if $claim }}
{{- $spec := get $claim "spec" | default dict }}
{{- $had := dig "resources" "requests" "storage" "" $spec | toString }}
{{- $bytes := include "p2pcache.bytes" (list "cache.size" .Values.cache.size) }}
{{- $hadBytes := include "p2pcache.quantityBytes" $had }}
{{- if and $hadBytes (ne $hadBytes $bytes) }}
{{- fail (printf "cache.size: %s (%s bytes) is not the %s the workers' volume claims were made with, and Kubernetes does not let an upgrade change a StatefulSet's volumeClaimTemplates: to resize, expand each PVC cache-%s-N to %s bytes (kubectl -n %s patch pvc; its storage class must allow volume expansion), %s" (toString .Values.cache.size) $bytes $had $name $bytes .Release.Namespace $orphan) }}
{{- end }}
{{- $class := dig "storageClassName" "" $spec }}
{{- if ne $class .Values.cache.volumeClaimTemplate.storageClassName }}
{{- fail (printf "cache.volumeClaimTemplate.storageClassName: %q is not the %q the workers' volume claims were made with, and Kubernetes does not let an upgrade change a StatefulSet's volumeClaimTemplates: keep it, or %s (existing PVCs keep their class until deleted)" .Values.cache.volumeClaimTemplate.storageClassName $class $orphan) }}
{{- end }}
{{- $modes := dig "accessModes" list $spec }}
{{- if ne (toJson $modes) (toJson .Values.cache.volumeClaimTemplate.accessModes) }}
{{- fail (printf "cache.volumeClaimTemplate.accessModes: %s is not the %s the workers' volume claims were made with, and Kubernetes does not let an upgrade change a StatefulSet's volumeClaimTemplates: keep them, or %s (existing PVCs keep theirs until deleted)" (toJson .Values.cache.volumeClaimTemplate.accessModes) (toJson $modes) $orphan) }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}

{{/* The worker's --heartbeat-interval. The worker takes any positive number; but workers beat at least
three times per --worker-ttl, whose least is 1 s (master/config.py): a third of a second is the
fastest beat the master is built to hear. Faster is a busy loop (1e-7 kept a fifth of a master core
busy), and a dead worker is dropped no sooner for it (--worker-ttl decides). */}}
{{- define "p2pcache.heartbeatInterval" -}}
{{- $interval := .Values.worker.heartbeatInterval }}
{{- if lt (float64 $interval) (divf 1 3) }}
{{- fail (printf "worker.heartbeatInterval: %v is under a third of a second, the fastest beat the master is built to hear (three per --worker-ttl, at least 1 s): give 0.34 or more (the default is 2)" $interval) }}
{{- end }}
{{- $interval }}
{{- end }}

{{/* A cache volume whose size the worker sees (a PVC; tmpfs, sized to its sizeLimit) must hold its
--capacity and its --min-free together: the worker evicts to keep min-free free on it, so a volume
smaller than both never fills its capacity (1GiB with the default 1GiB min-free caches nothing), and
a pinned preload the master accepts against that capacity fails. A disk emptyDir's free space is
the node's, and hostPath's the node volume's: not checked. */}}
{{- define "p2pcache.cacheVolumeFits" -}}
{{- $size := include "p2pcache.bytes" (list "cache.size" .Values.cache.size) | atoi }}
{{- $capacity := include "p2pcache.capacityBytes" . | atoi }}
{{- $minFree := include "p2pcache.bytes" (list "worker.minFree" .Values.worker.minFree) | atoi }}
{{- if or (gt $minFree $size) (gt $capacity (sub $size $minFree)) }}
{{- fail (printf "cache.size: %s (%d bytes) cannot hold the worker's --capacity=%d (cache.capacityPercent %d) and worker.minFree %s (%d bytes) it keeps free: the worker would never fill its capacity; raise cache.size, or lower cache.capacityPercent or worker.minFree" (toString .Values.cache.size) $size $capacity (int .Values.cache.capacityPercent) (toString .Values.worker.minFree) $minFree) }}
{{- end }}
{{- end }}
