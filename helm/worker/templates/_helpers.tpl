{{/* ---------------------------------------------------------------- names and labels */}}

{{- define "tw.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "tw.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* Name of a component's objects: tw.componentName (list $ "flower") */}}
{{- define "tw.componentName" -}}
{{- $root := index . 0 -}}
{{- printf "%s-%s" (include "tw.fullname" $root) (index . 1) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "tw.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "tw.selectorLabels" -}}
app.kubernetes.io/name: {{ include "tw.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "tw.labels" -}}
helm.sh/chart: {{ include "tw.chart" . }}
{{ include "tw.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: tenant-worker
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Selector labels of one worker pool: tw.poolSelector (list $ $pool) */}}
{{- define "tw.poolSelector" -}}
{{ include "tw.selectorLabels" (index . 0) }}
app.kubernetes.io/component: worker
tenant-worker/pool: {{ (index . 1).name }}
{{- end -}}

{{- define "tw.flowerSelector" -}}
{{ include "tw.selectorLabels" . }}
app.kubernetes.io/component: flower
{{- end -}}

{{- define "tw.apiSelector" -}}
{{ include "tw.selectorLabels" . }}
app.kubernetes.io/component: api
{{- end -}}

{{- define "tw.image" -}}
{{- $tag := default .Chart.AppVersion .Values.image.tag -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository $tag -}}
{{- end -}}
{{- end -}}

{{- define "tw.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "tw.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "tw.secretName" -}}
{{- default (include "tw.fullname" .) .Values.secret.existingSecret -}}
{{- end -}}

{{/* ---------------------------------------------------------------- worker pools */}}

{{/*
tw.deepMerge (dict "base" MAP "over" MAP) -> JSON. Maps merge recursively, anything else (lists, scalars,
false, 0, "") replaces, null removes the key. Sprig's mergeOverwrite cannot remove an inherited key, and
older helm 3 releases let it ignore false and 0.
*/}}
{{- define "tw.deepMerge" -}}
{{- $out := deepCopy .base -}}
{{- range $key, $value := .over -}}
{{- if kindIs "invalid" $value -}}
{{- $_ := unset $out $key -}}
{{- else if and (kindIs "map" $value) (kindIs "map" (get $out $key)) -}}
{{- $_ := set $out $key (include "tw.deepMerge" (dict "base" (get $out $key) "over" $value) | fromJson) -}}
{{- else -}}
{{- $_ := set $out $key $value -}}
{{- end -}}
{{- end -}}
{{- toJson $out -}}
{{- end -}}

{{/*
tw.pools -> JSON {"pools": [...]}: every entry of .Values.workers merged over workerDefaults, validated, with
derived fields: fullName, gracePeriod, nodeName, autoscaled. Value patterns and bounds are the
schema's (generated from config/options.py); the tw.validatePool.* helpers below hold the rules across values.
*/}}
{{- define "tw.pools" -}}
{{- $root := . -}}
{{- $pools := list -}}
{{- $seen := dict -}}
{{- /* Rendered Deployment names: truncation to 63 characters can make two of them equal. */ -}}
{{- $deployments := dict -}}
{{- if .Values.flower.enabled -}}
{{- $_ := set $deployments (include "tw.componentName" (list $root "flower")) "Flower" -}}
{{- end -}}
{{- if .Values.api.enabled -}}
{{- $_ := set $deployments (include "tw.componentName" (list $root "api")) "the API" -}}
{{- end -}}
{{- if not .Values.workers -}}
{{- fail "workers is empty: the chart needs at least one worker pool, e.g. workers: [{name: default}]" -}}
{{- end -}}
{{- range $i, $entry := .Values.workers -}}
{{- $pool := include "tw.deepMerge" (dict "base" $root.Values.workerDefaults "over" $entry) | fromJson -}}
{{- $name := required (printf "workers[%d].name is required" $i) $pool.name -}}
{{- if hasKey $seen $name -}}
{{- fail (printf "workers[%d]: the pool name %q is used twice; names must be unique" $i $name) -}}
{{- end -}}
{{- $_ := set $seen $name true -}}
{{- $_ := set $pool "fullName" (include "tw.componentName" (list $root (printf "worker-%s" $name))) -}}
{{- $ctx := dict "root" $root "pool" $pool "label" (printf "workers[%s]" $name) "deployments" $deployments -}}
{{- range $rule := list "deploymentName" "queues" "gracePeriod" "hostname" "extraArgs" "autoscaling" -}}
{{- with include (printf "tw.validatePool.%s" $rule) $ctx -}}
{{- fail . -}}
{{- end -}}
{{- end -}}
{{- $_ := set $deployments $pool.fullName (printf "pool %q" $name) -}}
{{- $_ := set $pool "gracePeriod" (include "tw.pool.gracePeriod" $pool | int64) -}}
{{- $_ := set $pool "nodeName" (default (printf "%s@%%h" $name) $pool.hostname) -}}
{{- $_ := set $pool "autoscaled" (or $pool.autoscaling.hpa.enabled $pool.autoscaling.keda.enabled) -}}
{{- $pools = append $pools $pool -}}
{{- end -}}
{{- toJson (dict "pools" $pools) -}}
{{- end -}}

{{/* Seconds the shutdown of a pool's pod takes: the soft shutdown, twice with the preStop drain. */}}
{{- define "tw.pool.shutdownSeconds" -}}
{{- $soft := int64 .softShutdownTimeout -}}
{{- if .preStopDrain }}{{ mul $soft 2 }}{{ else }}{{ $soft }}{{ end -}}
{{- end -}}

{{/* The pool's grace period: the explicit one, or the shutdown plus terminationGraceMarginSeconds. */}}
{{- define "tw.pool.gracePeriod" -}}
{{- if kindIs "invalid" .terminationGracePeriodSeconds -}}
{{- add (include "tw.pool.shutdownSeconds" . | int64) (int64 .terminationGraceMarginSeconds) -}}
{{- else -}}
{{- int64 .terminationGracePeriodSeconds -}}
{{- end -}}
{{- end -}}

{{/*
tw.validatePool.* (dict "root" $ "pool" POOL "label" "workers[NAME]" "deployments" NAME->OWNER): one message or
nothing each, like tw.validateValues.*; tw.pools fails with the first message of a pool.
*/}}
{{- define "tw.validatePool.deploymentName" -}}
{{- with get .deployments .pool.fullName -}}
{{ $.label }}: its Deployment name {{ $.pool.fullName | quote }} (names are cut to 63 characters) is also the name of {{ . }}; the objects would overwrite each other. Shorten the release name, fullnameOverride/nameOverride or the pool names so the names differ within 63 characters
{{- end -}}
{{- end -}}

{{- define "tw.validatePool.queues" -}}
{{- if not .pool.queues -}}
{{ .label }}: queues is empty; a pool must consume at least one queue
{{- end -}}
{{- end -}}

{{/*
The shutdown itself (drain, then soft shutdown) plus at least 15 s for the process to exit (the schema keeps
terminationGraceMarginSeconds at 15 or more, so a derived grace period always meets it).
*/}}
{{- define "tw.validatePool.gracePeriod" -}}
{{- $pool := .pool -}}
{{- if not (kindIs "invalid" $pool.terminationGracePeriodSeconds) -}}
{{- $exitMargin := 15 -}}
{{- $soft := int64 $pool.softShutdownTimeout -}}
{{- $needed := add (include "tw.pool.shutdownSeconds" $pool | int64) $exitMargin -}}
{{- $grace := int64 $pool.terminationGracePeriodSeconds -}}
{{- if lt $grace $needed -}}
{{- if $pool.preStopDrain -}}
{{ printf "%s: terminationGracePeriodSeconds (%d) is shorter than the shutdown needs (%d s: the preStop drain may wait softShutdownTimeout=%d s, then the soft shutdown gets another %d s, plus %d s for the worker to exit); running tasks would be killed. Raise terminationGracePeriodSeconds to at least %d (or leave it null to derive it), lower softShutdownTimeout, or set preStopDrain: false" .label $grace $needed $soft $soft $exitMargin $needed }}
{{- else -}}
{{ printf "%s: terminationGracePeriodSeconds (%d) is shorter than the shutdown needs (%d s: softShutdownTimeout=%d s plus %d s for the worker to exit); running tasks would be killed before the soft shutdown ends. Raise terminationGracePeriodSeconds to at least %d (or leave it null to derive it) or lower softShutdownTimeout" .label $grace $needed $soft $exitMargin $needed }}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/*
The schema checks both hostname rules too; the template repeats them (same generated patterns) for
--skip-schema-validation.
*/}}
{{- define "tw.validatePool.hostname" -}}
{{- $hostname := .pool.hostname -}}
{{- $patterns := (include "tw.options" .root | fromJson).patterns -}}
{{- $name := .pool.name -}}
{{- if and $hostname (not (regexMatch $patterns.hostname $hostname)) -}}
{{ printf "%s: hostname %q has no %%h or %%n (the pod name), so every replica would get the same node name and one pod's preStop drain (cancel_consumer for that node) would stop all of them. Include %%h, e.g. %q, or leave it empty for %s@%%h (%%i is the process index, 0 in every replica)" .label $hostname (printf "%s@%%h" (trimSuffix "@" (regexReplaceAll "@.*$" $hostname ""))) $name }}
{{- else if and $hostname (not (regexMatch $patterns.imageHostname $hostname)) -}}
{{ printf "%s: hostname %q is not a node name the image accepts (CELERY_WORKER_HOSTNAME): letters, digits and _.%%- with at most one @, which needs text on both sides, e.g. %q" .label $hostname (printf "%s@%%h" $name) }}
{{- end -}}
{{- end -}}

{{/* The image splits CELERY_WORKER_OPTS like a POSIX shell (shlex) and refuses unbalanced quotes or a trailing backslash. */}}
{{- define "tw.validatePool.extraArgs" -}}
{{- if not (regexMatch `^([^'"\\]|\\[\s\S]|'[^']*'|"([^"\\]|\\[\s\S])*")*$` .pool.extraArgs) -}}
{{ printf "%s: extraArgs %q cannot be split like a shell line (an unclosed quote, or a backslash at the end); the image would refuse CELERY_WORKER_OPTS. Close the quotes or escape the backslash" .label .pool.extraArgs }}
{{- end -}}
{{- end -}}

{{- define "tw.validatePool.autoscaling" -}}
{{- $a := .pool.autoscaling -}}
{{- $keda := .root.Values.keda.redis -}}
{{- $s := .root.Values.secret -}}
{{- if and $a.hpa.enabled $a.keda.enabled -}}
{{ .label }}: autoscaling.hpa and autoscaling.keda are both enabled; they would fight over the replica count. Enable one of them
{{- else if and $a.hpa.enabled (gt (int64 $a.hpa.minReplicas) (int64 $a.hpa.maxReplicas)) -}}
{{ .label }}: autoscaling.hpa.minReplicas is above maxReplicas
{{- else if and $a.hpa.enabled (not (or $a.hpa.targetCPUUtilizationPercentage $a.hpa.targetMemoryUtilizationPercentage)) -}}
{{ .label }}: autoscaling.hpa needs targetCPUUtilizationPercentage or targetMemoryUtilizationPercentage
{{- else if and $a.keda.enabled $keda.usePassword (not $s.existingSecret) (not $s.redisPassword) -}}
{{ .label }}: autoscaling.keda reads the Redis password from the Secret, but secret.redisPassword is empty; set it (or use secret.existingSecret with REDIS_PASSWORD), or set keda.redis.usePassword=false for a Redis without a password
{{- else if and $a.keda.enabled (not $keda.address) -}}
{{ .label }}: autoscaling.keda is enabled but keda.redis.address (host:port of the broker Redis) is empty
{{- else if and $a.keda.enabled (gt (int64 $a.keda.minReplicaCount) (int64 $a.keda.maxReplicaCount)) -}}
{{ .label }}: autoscaling.keda.minReplicaCount is above maxReplicaCount
{{- end -}}
{{- end -}}

{{/* ---------------------------------------------------------------- configuration */}}

{{- define "tw.yesno" -}}
{{- if . }}yes{{ else }}no{{ end -}}
{{- end -}}

{{/*
files/options.json, generated from config/options.py by hack/generate_schema.py: which config.* key sets which
variable as which type, the variables the chart fixes, every declared variable, and the hostname patterns.
*/}}
{{- define "tw.options" -}}
{{- .Files.Get "files/options.json" -}}
{{- end -}}

{{/* Non-secret settings as NAME -> string (JSON); the ConfigMap and the migration Job share it. */}}
{{- define "tw.configData" -}}
{{- $c := .Values.config -}}
{{- $options := include "tw.options" . | fromJson -}}
{{- $data := dict -}}
{{- range $key, $option := $options.config -}}
{{- $value := get $c $key -}}
{{- if eq $option.type "integer" -}}
{{- $_ := set $data $option.env (toString (int64 $value)) -}}
{{- else if eq $option.type "boolean" -}}
{{- $_ := set $data $option.env (include "tw.yesno" $value) -}}
{{- else -}}
{{- $_ := set $data $option.env (toString $value) -}}
{{- end -}}
{{- end -}}
{{- range $name, $value := $options.fixed -}}
{{- $_ := set $data $name $value -}}
{{- end -}}
{{- range $k, $v := $c.extra -}}
{{- $_ := set $data $k (toString $v) -}}
{{- end -}}
{{- toJson $data -}}
{{- end -}}

{{/* Redis TLS settings (NAME -> string) for containers that talk to Redis. */}}
{{- define "tw.tlsEnvData" -}}
{{- $t := .Values.redisTls -}}
{{- $data := dict "REDIS_SSL_CERT_REQS" $t.certReqs -}}
{{- if include "tw.caSource" . -}}
{{- $_ := set $data "REDIS_SSL_CA_CERTS" "/etc/tenant-worker/redis-ca/ca.crt" -}}
{{- end -}}
{{- if $t.clientCert.existingSecret -}}
{{- $_ := set $data "REDIS_SSL_CERTFILE" "/etc/tenant-worker/redis-client/tls.crt" -}}
{{- $_ := set $data "REDIS_SSL_KEYFILE" "/etc/tenant-worker/redis-client/tls.key" -}}
{{- end -}}
{{- toJson $data -}}
{{- end -}}

{{/* "secret", "configMap" or "" : where the Redis CA bundle comes from. */}}
{{- define "tw.caSource" -}}
{{- $ca := .Values.redisTls.ca -}}
{{- $n := 0 -}}
{{- if $ca.existingSecret }}{{ $n = add1 $n }}{{ end -}}
{{- if $ca.existingConfigMap }}{{ $n = add1 $n }}{{ end -}}
{{- if $ca.pem }}{{ $n = add1 $n }}{{ end -}}
{{- if gt $n 1 -}}
{{- fail "redisTls.ca: set only one of existingSecret, existingConfigMap and pem" -}}
{{- end -}}
{{- if $ca.existingSecret -}}secret{{- else if or $ca.existingConfigMap $ca.pem -}}configMap{{- end -}}
{{- end -}}

{{- define "tw.caConfigMapName" -}}
{{- if .Values.redisTls.ca.existingConfigMap -}}
{{- .Values.redisTls.ca.existingConfigMap -}}
{{- else -}}
{{- include "tw.componentName" (list . "redis-ca") -}}
{{- end -}}
{{- end -}}

{{/* The CA key inside the chart-created ConfigMap is always ca.crt. */}}
{{- define "tw.caKey" -}}
{{- if .Values.redisTls.ca.pem -}}ca.crt{{- else -}}{{ .Values.redisTls.ca.key }}{{- end -}}
{{- end -}}

{{/* Secret-backed env entries. tw.secretEnv (dict "root" $ "for" "worker"|"flower"|"api"|"migrate"). */}}
{{- define "tw.secretEnv" -}}
{{- $root := .root -}}
{{- $s := $root.Values.secret -}}
{{- $name := include "tw.secretName" $root -}}
{{- if eq .for "migrate" -}}
{{- $name = ternary $s.existingSecret (include "tw.componentName" (list $root "migrate")) (ne $s.existingSecret "") -}}
{{- end -}}
{{- $entries := list -}}
{{- if ne .for "migrate" -}}
{{- $entries = append $entries (list "BROKER_URL" $s.keys.brokerUrl false) -}}
{{- $entries = append $entries (list "CELERY_RESULT_BACKEND" $s.keys.resultBackend false) -}}
{{- end -}}
{{- if ne .for "flower" -}}
{{- $entries = append $entries (list "DATABASE_URL" $s.keys.databaseUrl false) -}}
{{- end -}}
{{- if eq .for "migrate" -}}
{{- $entries = append $entries (list "MIGRATION_DATABASE_URL" $s.keys.migrationDatabaseUrl true) -}}
{{- end -}}
{{- if eq .for "worker" -}}
{{- /* Optional: signing is off without it (an existingSecret may not hold the key). */ -}}
{{- $entries = append $entries (list "TENANT_SIGNING_KEY" $s.keys.tenantSigningKey true) -}}
{{- $entries = append $entries (list "DB_ENCRYPTION_KEY" $s.keys.dbEncryptionKey true) -}}
{{- $entries = append $entries (list "GEMINI_API_KEY" $s.keys.geminiApiKey true) -}}
{{- $entries = append $entries (list "AZURE_OPENAI_API_KEY" $s.keys.azureOpenaiApiKey true) -}}
{{- range (concat (keys $s.extra) $s.extraKeys | uniq | sortAlpha) -}}
{{- $entries = append $entries (list . . false) -}}
{{- end -}}
{{- end -}}
{{- if eq .for "api" -}}
{{- /* It publishes execute tasks: signed like every producer's when the workers verify. */ -}}
{{- $entries = append $entries (list "TENANT_SIGNING_KEY" $s.keys.tenantSigningKey true) -}}
{{- /* Optional only when another authentication (api.authDependency) replaces the tokens. */ -}}
{{- $entries = append $entries (list "API_TOKEN_SECRET" $s.keys.apiTokenSecret (ne $root.Values.api.authDependency "")) -}}
{{- end -}}
{{- if eq .for "flower" -}}
{{- $auth := $root.Values.flower.auth -}}
{{- if eq $auth.type "basic" -}}
{{- $entries = append $entries (list "FLOWER_BASIC_AUTH" $s.keys.flowerBasicAuth false) -}}
{{- else if eq $auth.type "oauth" -}}
{{- $entries = append $entries (list "FLOWER_OAUTH2_KEY" $s.keys.flowerOauth2Key false) -}}
{{- $entries = append $entries (list "FLOWER_OAUTH2_SECRET" $s.keys.flowerOauth2Secret false) -}}
{{- $entries = append $entries (list "FLOWER_COOKIE_SECRET" $s.keys.flowerCookieSecret true) -}}
{{- end -}}
{{- end -}}
{{- range $entries }}
- name: {{ index . 0 }}
  valueFrom:
    secretKeyRef:
      name: {{ $name }}
      key: {{ index . 1 }}
      {{- if index . 2 }}
      optional: true
      {{- end }}
{{- end -}}
{{- end -}}

{{/* ---------------------------------------------------------------- pod pieces */}}

{{- define "tw.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
fsGroup: 10001
fsGroupChangePolicy: OnRootMismatch
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "tw.containerSecurityContext" -}}
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
allowPrivilegeEscalation: false
privileged: false
readOnlyRootFilesystem: true
capabilities:
  drop: [ALL]
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* Pod-level settings every component shares. */}}
{{- define "tw.podCommon" -}}
serviceAccountName: {{ include "tw.serviceAccountName" . }}
{{ include "tw.podCommonBase" . }}
{{- end -}}

{{/*
Pod-level settings of the pre-install/pre-upgrade migration hook. The chart-created ServiceAccount is a normal
release object and does not exist yet when pre-install hooks run (the API server would refuse the pod), so the
hook uses the namespace's default ServiceAccount, or an existing one named with serviceAccount.create=false.
*/}}
{{- define "tw.hookPodCommon" -}}
{{- if and (not .Values.serviceAccount.create) .Values.serviceAccount.name -}}
serviceAccountName: {{ .Values.serviceAccount.name }}
{{ end -}}
{{ include "tw.podCommonBase" . }}
{{- end -}}

{{- define "tw.podCommonBase" -}}
automountServiceAccountToken: false
enableServiceLinks: false
{{- if .Values.hostNetwork }}
hostNetwork: true
dnsPolicy: ClusterFirstWithHostNet
{{- end }}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
securityContext:
  {{- include "tw.podSecurityContext" . | nindent 2 }}
{{- end -}}

{{/* Volumes for Redis TLS material (read-only), as a YAML list (possibly empty). */}}
{{- define "tw.tlsVolumes" -}}
{{- $src := include "tw.caSource" . -}}
{{- if eq $src "secret" }}
- name: redis-ca
  secret:
    secretName: {{ .Values.redisTls.ca.existingSecret }}
    defaultMode: 0440
    items:
      - key: {{ .Values.redisTls.ca.key }}
        path: ca.crt
{{- else if eq $src "configMap" }}
- name: redis-ca
  configMap:
    name: {{ include "tw.caConfigMapName" . }}
    defaultMode: 0440
    items:
      - key: {{ include "tw.caKey" . }}
        path: ca.crt
{{- end }}
{{- with .Values.redisTls.clientCert }}
{{- if .existingSecret }}
- name: redis-client-cert
  secret:
    secretName: {{ .existingSecret }}
    defaultMode: 0440
    items:
      - key: {{ .certKey }}
        path: tls.crt
      - key: {{ .keyKey }}
        path: tls.key
{{- end }}
{{- end }}
{{- end -}}

{{- define "tw.tlsMounts" -}}
{{- if include "tw.caSource" . }}
- name: redis-ca
  mountPath: /etc/tenant-worker/redis-ca
  readOnly: true
{{- end }}
{{- if .Values.redisTls.clientCert.existingSecret }}
- name: redis-client-cert
  mountPath: /etc/tenant-worker/redis-client
  readOnly: true
{{- end }}
{{- end -}}

{{/* A probe: default handler unless the values bring their own. tw.probe (dict "probe" P "handler" H) */}}
{{- define "tw.probe" -}}
{{- $p := omit .probe "enabled" -}}
{{- if not (or $p.exec $p.httpGet $p.tcpSocket $p.grpc) -}}
{{- $p = merge $p .handler -}}
{{- end -}}
{{- toYaml $p -}}
{{- end -}}

{{/* Checksums of rendered configuration; they roll the pods when it changes. */}}
{{- define "tw.checksums" -}}
checksum/config: {{ include (print .Template.BasePath "/configmap.yaml") . | sha256sum }}
checksum/secret: {{ include (print .Template.BasePath "/secret.yaml") . | sha256sum }}
{{- end -}}

{{/* ---------------------------------------------------------------- validation */}}

{{/*
Rules of the image's own configuration check (`python -m config check` and `worker-args`, run by entrypoint.sh
before anything starts; config/loader.py _check_together and config/options.py). A value set that breaks one
would render fine and then crash-loop every pod and the migration hook, so the render fails instead. Each
tw.validateValues.* helper prints one message or nothing (Bitnami's common.validations style); per-field bounds
are in values.schema.json, generated from config/options.py.
*/}}

{{- define "tw.validateValues.taskTimeLimits" -}}
{{- $soft := int64 .Values.config.taskSoftTimeLimit -}}
{{- $hard := int64 .Values.config.taskTimeLimit -}}
{{- if ge $soft $hard -}}
config.taskSoftTimeLimit ({{ $soft }}) must be below config.taskTimeLimit ({{ $hard }}): the soft limit (TASK_SOFT_TIME_LIMIT) has to fire before the hard one (TASK_TIME_LIMIT) kills the task. Lower taskSoftTimeLimit or raise taskTimeLimit
{{- end -}}
{{- end -}}

{{- define "tw.validateValues.visibilityTimeout" -}}
{{- $c := .Values.config -}}
{{- $visibility := int64 $c.brokerVisibilityTimeout -}}
{{- $wait := max (int64 $c.taskMaxCountdown) (int64 $c.taskRetryBackoffMax) -}}
{{- $needed := add (int64 $c.taskTimeLimit) $wait -}}
{{- if le $visibility $needed -}}
config.brokerVisibilityTimeout ({{ $visibility }}) must be above config.taskTimeLimit + max(config.taskMaxCountdown, config.taskRetryBackoffMax) ({{ int64 $c.taskTimeLimit }} + {{ $wait }} = {{ $needed }}): Redis would deliver a running or waiting (countdown, retry backoff) task a second time. Raise brokerVisibilityTimeout to at least {{ add1 $needed }}
{{- end -}}
{{- end -}}

{{- define "tw.validateValues.heartbeat" -}}
{{- $age := int64 .Values.config.workerHeartbeatMaxAge -}}
{{- $interval := int64 .Values.config.workerHeartbeatInterval -}}
{{- if le $age $interval -}}
config.workerHeartbeatMaxAge ({{ $age }}) must be above config.workerHeartbeatInterval ({{ $interval }}): a healthy worker's heartbeat would look stale and the probes would restart it. Raise workerHeartbeatMaxAge or lower workerHeartbeatInterval
{{- end -}}
{{- end -}}

{{/*
config.extra, secret.extra and secret.extraKeys are for variables the image does not declare (newer options, model
API keys). One naming a declared variable (or its NAME_FILE form) would silently override the chart's own value,
past the schema's bounds and the rules above, in some containers only.
*/}}
{{- define "tw.validateValues.extraVariables" -}}
{{- /* Every variable config/options.py declares (a test renders them all into config.extra and secret.extraKeys). */ -}}
{{- $declared := (include "tw.options" . | fromJson).declared -}}
{{- $s := .Values.secret -}}
{{- $sources := list (list "config.extra" (keys .Values.config.extra)) (list "secret.extra" (keys $s.extra)) (list "secret.extraKeys" $s.extraKeys) -}}
{{- $taken := list -}}
{{- range $sources -}}
{{- $where := index . 0 -}}
{{- range $name := (index . 1) | sortAlpha -}}
{{- if or (has $name $declared) (and (hasSuffix "_FILE" $name) (has (trimSuffix "_FILE" $name) $declared)) -}}
{{- $taken = append $taken (printf "%s.%s" $where $name) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- if $taken -}}
{{ join ", " $taken }}: the image reads these variables and the chart sets each of them from its own value (config.*, secret.*, redisTls.*, workers[].*, flower.*), which the extra one would override past the chart's checks. Set that value instead; the extras are for variables the image does not declare
{{- end -}}
{{- end -}}

{{/* All tw.validateValues.* messages, one per line; the render fails when there is any. */}}
{{- define "tw.validateValues" -}}
{{- $messages := list
  (include "tw.validateValues.taskTimeLimits" .)
  (include "tw.validateValues.visibilityTimeout" .)
  (include "tw.validateValues.heartbeat" .)
  (include "tw.validateValues.extraVariables" .)
-}}
{{- $messages = without $messages "" -}}
{{- if $messages -}}
{{- fail (printf "\nVALUES VALIDATION:\n%s" (join "\n" $messages)) -}}
{{- end -}}
{{- end -}}

{{/* Rules the schema cannot express; each failure names the value to change. */}}
{{- define "tw.validate" -}}
{{- $_ := include "tw.pools" . -}}
{{- $_ := include "tw.caSource" . -}}
{{- $s := .Values.secret -}}
{{- $f := .Values.flower -}}
{{- $secretVars := list "BROKER_URL" "CELERY_RESULT_BACKEND" "DATABASE_URL" "MIGRATION_DATABASE_URL" "FLOWER_BASIC_AUTH" "FLOWER_OAUTH2_SECRET" "FLOWER_COOKIE_SECRET" "TENANT_SIGNING_KEY" "API_TOKEN_SECRET" -}}
{{- range $k, $_ := .Values.config.extra -}}
{{- if or (has $k $secretVars) (hasSuffix "_FILE" $k) -}}
{{- fail (printf "config.extra.%s: secret settings do not belong in the ConfigMap; put them into the Secret (secret.* or secret.existingSecret)" $k) -}}
{{- end -}}
{{- end -}}
{{- if $f.enabled -}}
{{- if eq $f.auth.type "none" -}}
{{- if not $f.auth.allowUnauthenticated -}}
{{- fail "flower.enabled with flower.auth.type=none: Flower would be open to anyone who reaches it. Use flower.auth.type basic (FLOWER_BASIC_AUTH in the Secret) or oauth, or set flower.auth.allowUnauthenticated=true for development only" -}}
{{- end -}}
{{- else if eq $f.auth.type "basic" -}}
{{- if and (not $s.existingSecret) (not $s.flowerBasicAuth) -}}
{{- fail "flower.enabled needs authentication: set secret.flowerBasicAuth (user:password), or put FLOWER_BASIC_AUTH in secret.existingSecret, or use flower.auth.type=oauth (flower.auth.allowUnauthenticated=true with type none is for development only)" -}}
{{- end -}}
{{- else if eq $f.auth.type "oauth" -}}
{{- if not $f.auth.oauth.provider -}}
{{- fail "flower.auth.type=oauth needs flower.auth.oauth.provider (FLOWER_AUTH_PROVIDER, e.g. flower.views.auth.GithubLoginHandler)" -}}
{{- end -}}
{{- if not $f.auth.oauth.allowedEmails -}}
{{- fail "flower.auth.type=oauth needs flower.auth.oauth.allowedEmails (FLOWER_AUTH, a regular expression of allowed e-mail addresses); without it any account of the provider gets in" -}}
{{- end -}}
{{- if and (not $s.existingSecret) (not (and $s.flowerOauth2Key $s.flowerOauth2Secret)) -}}
{{- fail "flower.auth.type=oauth needs secret.flowerOauth2Key and secret.flowerOauth2Secret (or FLOWER_OAUTH2_KEY and FLOWER_OAUTH2_SECRET in secret.existingSecret)" -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- if and $f.ingress.enabled (not $f.enabled) -}}
{{- fail "flower.ingress.enabled needs flower.enabled" -}}
{{- end -}}
{{- if and .Values.networkPolicy.enabled $f.enabled $f.ingress.enabled (not .Values.networkPolicy.flowerFrom) -}}
{{- fail "networkPolicy.enabled with flower.ingress.enabled: networkPolicy.flowerFrom is empty, so Flower's NetworkPolicy admits nobody and the ingress controller cannot reach Flower. Set networkPolicy.flowerFrom to the ingress controller's pods, e.g. [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: ingress-nginx}}}]" -}}
{{- end -}}
{{- $a := .Values.api -}}
{{- if and $a.enabled (not $a.authDependency) (not $s.existingSecret) (not $s.apiTokenSecret) -}}
{{- fail "api.enabled needs authentication: set secret.apiTokenSecret (random keys of at least 32 characters, `openssl rand -hex 32`), or put API_TOKEN_SECRET in secret.existingSecret, or set api.authDependency to a FastAPI dependency of your own (the API has no unauthenticated mode)" -}}
{{- end -}}
{{- if and .Values.networkPolicy.enabled $a.enabled (not .Values.networkPolicy.apiFrom) -}}
{{- fail "networkPolicy.enabled with api.enabled: networkPolicy.apiFrom is empty, so the API's NetworkPolicy admits nobody. Set networkPolicy.apiFrom to its clients' pods, e.g. [{podSelector: {matchLabels: {app: backend}}}]" -}}
{{- end -}}
{{- if and $s.existingSecret (or $s.brokerUrl $s.resultBackend $s.databaseUrl $s.migrationDatabaseUrl $s.flowerBasicAuth $s.flowerOauth2Key $s.flowerOauth2Secret $s.flowerCookieSecret $s.redisPassword $s.tenantSigningKey $s.apiTokenSecret $s.extra) -}}
{{- fail "secret.existingSecret is set together with secret values (brokerUrl, databaseUrl, extra, ...): those would be ignored. Put them into the existing Secret, or leave existingSecret empty" -}}
{{- end -}}
{{- include "tw.validateValues" . -}}
{{- end -}}
