{{/* Names and labels. */}}
{{- define "isoflow.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "isoflow.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else if contains (include "isoflow.name" .) .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name (include "isoflow.name" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "isoflow.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "isoflow.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{/* Selector labels of one component: pass (list $ "coordinator"). */}}
{{- define "isoflow.selector" -}}
{{- $ := index . 0 -}}
app.kubernetes.io/name: {{ include "isoflow.name" $ }}
app.kubernetes.io/instance: {{ $.Release.Name }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end -}}

{{- define "isoflow.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "isoflow.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "isoflow.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{- define "isoflow.headless" -}}
{{- printf "%s-coordinator-headless" (include "isoflow.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "isoflow.etcdName" -}}
{{- printf "%s-etcd" (include "isoflow.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The name workers and clients check on the coordinator's certificate. */}}
{{- define "isoflow.serverName" -}}
{{- default (printf "%s.%s.svc" (include "isoflow.fullname" .) .Release.Namespace) .Values.tls.serverName -}}
{{- end -}}

{{- define "isoflow.etcdEndpoints" -}}
{{- if .Values.etcd.endpoints -}}
{{- toJson .Values.etcd.endpoints -}}
{{- else -}}
{{- toJson (list (printf "http://%s.%s.svc.%s:2379" (include "isoflow.etcdName" .) .Release.Namespace .Values.clusterDomain)) -}}
{{- end -}}
{{- end -}}

{{/* Where each secret comes from: (list $ "clusterToken") -> {name, key}. */}}
{{- define "isoflow.secretRef" -}}
{{- $ := index . 0 -}}
{{- $s := index $.Values.secrets (index . 1) -}}
{{- if $s.existingSecret -}}
{{- toJson (dict "name" $s.existingSecret "key" $s.key) -}}
{{- else -}}
{{- toJson (dict "name" (include "isoflow.fullname" $) "key" $s.key) -}}
{{- end -}}
{{- end -}}

{{- define "isoflow.vaultEnabled" -}}
{{- if .Values.secrets.vaultKey.id }}true{{ end -}}
{{- end -}}

{{/*
A TOML table from a map: its scalars and arrays first, then each sub-table
under its own header. Keys whose value is null, "" or an empty list or map
are left out, so the node's defaults apply; false and 0 are kept. Numbers
that are whole are written as integers (Helm reads every YAML number as a
float, which the node's integer keys refuse).
Pass (dict "path" "worker" "table" $map).
*/}}
{{- define "isoflow.toml.value" -}}
{{- $v := . -}}
{{- if kindIs "string" $v -}}{{ toJson $v }}
{{- else if kindIs "bool" $v -}}{{ ternary "true" "false" $v }}
{{- else if or (kindIs "float64" $v) (kindIs "float32" $v) -}}
{{- if eq (float64 (int64 $v)) (float64 $v) }}{{ int64 $v }}{{ else }}{{ $v }}{{ end -}}
{{- else if or (kindIs "int" $v) (kindIs "int64" $v) -}}{{ $v }}
{{- else if kindIs "slice" $v -}}
[{{ range $i, $e := $v }}{{ if $i }}, {{ end }}{{ include "isoflow.toml.value" $e }}{{ end }}]
{{- else if kindIs "map" $v -}}
{ {{- $first := true -}}{{ range $k := keys $v | sortAlpha }}{{ $e := index $v $k }}{{ if include "isoflow.toml.set" $e }}{{ if not $first }},{{ end }} {{ $k }} = {{ include "isoflow.toml.value" $e }}{{ $first = false }}{{ end }}{{ end }} }
{{- else -}}
{{- fail (printf "cannot write %v (%s) in TOML" $v (kindOf $v)) -}}
{{- end -}}
{{- end -}}

{{- define "isoflow.toml.set" -}}
{{- if kindIs "invalid" . -}}
{{- else if kindIs "bool" . -}}true
{{- else if or (kindIs "string" .) (kindIs "slice" .) (kindIs "map" .) -}}{{ if . }}true{{ end }}
{{- else -}}true
{{- end -}}
{{- end -}}

{{- define "isoflow.toml.table" -}}
{{- $path := .path -}}
{{- $table := .table -}}
{{- $scalars := "" -}}
{{- range $k := keys $table | sortAlpha -}}
{{- $v := index $table $k -}}
{{- if and (include "isoflow.toml.set" $v) (not (kindIs "map" $v)) -}}
{{- $scalars = printf "%s%s = %s\n" $scalars $k (include "isoflow.toml.value" $v) -}}
{{- end -}}
{{- end -}}
{{- if $scalars -}}
{{- if $path }}{{ printf "\n[%s]\n" $path }}{{ end -}}
{{- $scalars -}}
{{- end -}}
{{- range $k := keys $table | sortAlpha -}}
{{- $v := index $table $k -}}
{{- if and (kindIs "map" $v) (include "isoflow.toml.set" $v) -}}
{{- include "isoflow.toml.table" (dict "path" (ternary $k (printf "%s.%s" $path $k) (eq $path "")) "table" $v) -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* The node's configuration of one role: (list $ "coordinator"). */}}
{{- define "isoflow.config" -}}
{{- $ := index . 0 -}}
{{- $role := index . 1 -}}
{{- $v := $.Values -}}
{{- $c := deepCopy $v.config -}}
{{- $_ := set $c "role" $role -}}
{{- $http := deepCopy (default dict $c.http) -}}
{{- $_ = set $http "listen" (printf "0.0.0.0:%d" (int $v.ports.http)) -}}
{{- $_ = set $c "http" $http -}}
{{- $etcd := deepCopy (default dict $c.etcd) -}}
{{- $_ = set $etcd "endpoints" (include "isoflow.etcdEndpoints" $ | fromJsonArray) -}}
{{- if $v.etcd.tls.existingSecret -}}
{{- $_ = set $etcd "ca" "/etc/isoflow/etcd-tls/ca.crt" -}}
{{- if $v.etcd.tls.clientCertificate -}}
{{- $_ = set $etcd "cert" "/etc/isoflow/etcd-tls/tls.crt" -}}
{{- $_ = set $etcd "key" "/etc/isoflow/etcd-tls/tls.key" -}}
{{- end -}}
{{- end -}}
{{- if $v.etcd.auth.user -}}
{{- $_ = set $etcd "user" $v.etcd.auth.user -}}
{{- end -}}
{{- $_ = set $c "etcd" $etcd -}}
{{- if eq $role "coordinator" -}}
{{- $c = omit $c "worker" "sandbox" -}}
{{- $_ = set $c "data_dir" "/var/lib/isoflow" -}}
{{- $_ = set $c "api" (dict "listen" (printf "0.0.0.0:%d" (int $v.ports.grpc))) -}}
{{- if $v.tls.enabled -}}
{{- $_ = set $c "tls" (dict "cert" "/etc/isoflow/tls/tls.crt" "key" "/etc/isoflow/tls/tls.key" "client_ca" "/etc/isoflow/tls/ca.crt") -}}
{{- end -}}
{{- if include "isoflow.vaultEnabled" $ -}}
{{- $previous := list -}}
{{- range $i, $p := $v.secrets.vaultKey.previous -}}
{{- $previous = append $previous (dict "id" $p.id "env" (printf "ISOFLOW_VAULT_PREVIOUS_%d" $i)) -}}
{{- end -}}
{{- $_ = set $c "vault" (dict "key" (dict "id" $v.secrets.vaultKey.id "env" "ISOFLOW_VAULT_KEY") "previous" $previous) -}}
{{- end -}}
{{- else -}}
{{- $c = omit $c "smtp" "retention" "limits" -}}
{{- if $v.tls.enabled -}}
{{- $worker := deepCopy (default dict $c.worker) -}}
{{- $_ = set $worker "tls" (dict "ca" "/etc/isoflow/tls/ca.crt" "cert" "/etc/isoflow/tls/tls.crt" "key" "/etc/isoflow/tls/tls.key" "server_name" (include "isoflow.serverName" $)) -}}
{{- $_ = set $c "worker" $worker -}}
{{- end -}}
{{- end -}}
# isoflow.toml of a {{ $role }}, rendered by the Helm chart from values.config.
# Every key: deploy/isoflow.example.toml. Secrets come from ISOFLOW_* variables.
{{ include "isoflow.toml.table" (dict "path" "" "table" $c) }}
{{- end -}}
