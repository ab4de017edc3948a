{{/* The resource name: fullnameOverride, else RELEASE-CHART (RELEASE when it contains the chart name). */}}
{{- define "acmeproxy.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* Labels that select the pod. */}}
{{- define "acmeproxy.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* Labels of every resource. */}}
{{- define "acmeproxy.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{ include "acmeproxy.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{/* The Secret holding ca.json. */}}
{{- define "acmeproxy.secretName" -}}
{{- if .Values.existingSecret -}}
{{- .Values.existingSecret -}}
{{- else -}}
{{- include "acmeproxy.fullname" . -}}
{{- end -}}
{{- end -}}

{{/* The PersistentVolumeClaim of the data directory. */}}
{{- define "acmeproxy.claimName" -}}
{{- if .Values.persistence.existingClaim -}}
{{- .Values.persistence.existingClaim -}}
{{- else -}}
{{- include "acmeproxy.fullname" . -}}
{{- end -}}
{{- end -}}

{{/* The mount of the PostgreSQL password Secret. */}}
{{- define "acmeproxy.dbPasswordDir" -}}
/etc/acmeproxy-db
{{- end -}}

{{/* ca.json: config, with the db block from `postgresql` when enabled. */}}
{{- define "acmeproxy.config" -}}
{{- if .Values.postgresql.enabled -}}
{{- merge (dict "db" (dict "type" "postgresql" "dataSource" .Values.postgresql.dataSource "database" .Values.postgresql.database "passwordFile" (printf "%s/password" (include "acmeproxy.dbPasswordDir" .)))) .Values.config | toPrettyJson -}}
{{- else -}}
{{- .Values.config | toPrettyJson -}}
{{- end -}}
{{- end -}}

{{/* Refuses values that cannot work; renders nothing. */}}
{{- define "acmeproxy.validate" -}}
{{- if and (gt (int .Values.replicaCount) 1) (not .Values.postgresql.enabled) -}}
{{- fail "replicaCount > 1 needs postgresql.enabled: the sled store (db.type sled) is one process on one disk" -}}
{{- end -}}
{{- if and (gt (int .Values.replicaCount) 1) (not .Values.existingSecret) (eq .Values.config.authority.type "softcas") -}}
{{- fail "replicaCount > 1 needs an external upstream (config.authority.type externalcas, stepcas or vaultcas): with softcas each pod would be a CA of its own" -}}
{{- end -}}
{{- if .Values.postgresql.enabled -}}
{{- if not .Values.postgresql.dataSource -}}
{{- fail "postgresql.enabled needs postgresql.dataSource, a libpq URL without the password, e.g. postgresql://acmeproxy@postgres.db.svc:5432/?sslmode=verify-full" -}}
{{- end -}}
{{- if not (and .Values.postgresql.passwordSecret.name .Values.postgresql.passwordSecret.key) -}}
{{- fail "postgresql.enabled needs postgresql.passwordSecret.name and .key: an existing Secret holding the database password" -}}
{{- end -}}
{{- end -}}
{{- end -}}
