{{/*
What the schema cannot say: settings that only go together. Each failure is
one sentence naming the values to change.
*/}}
{{- define "isoflow.validate" -}}
{{- $v := .Values -}}
{{- if and $v.etcd.endpoints $v.etcd.bundled.enabled -}}
{{- fail "etcd.endpoints is set and etcd.bundled.enabled is true: use your etcd (set etcd.bundled.enabled=false) or the bundled one (leave etcd.endpoints empty)" -}}
{{- end -}}
{{- if and (not $v.etcd.endpoints) (not $v.etcd.bundled.enabled) -}}
{{- fail "no etcd: set etcd.endpoints, or etcd.bundled.enabled=true" -}}
{{- end -}}
{{- range $v.etcd.endpoints -}}
{{- if and (hasPrefix "https://" .) (not $v.etcd.tls.existingSecret) -}}
{{- fail (printf "the etcd endpoint %s uses TLS: set etcd.tls.existingSecret (a Secret with ca.crt)" .) -}}
{{- end -}}
{{- if and (hasPrefix "http://" .) $v.etcd.tls.existingSecret -}}
{{- fail (printf "etcd.tls.existingSecret is set, but the etcd endpoint %s is not https://" .) -}}
{{- end -}}
{{- end -}}
{{- if and $v.etcd.bundled.enabled (or $v.etcd.tls.existingSecret $v.etcd.auth.user) -}}
{{- fail "the bundled etcd speaks plain HTTP without authentication: etcd.tls and etcd.auth are for your own etcd (etcd.endpoints)" -}}
{{- end -}}
{{- if and $v.etcd.auth.user (not $v.etcd.auth.existingSecret) -}}
{{- fail "etcd.auth.user is set without etcd.auth.existingSecret, the Secret holding its password" -}}
{{- end -}}
{{- if $v.tls.enabled -}}
{{- if not $v.tls.coordinatorSecret -}}
{{- fail "tls.enabled needs tls.coordinatorSecret: a Secret with tls.crt, tls.key and ca.crt (the CA that signs workers' certificates)" -}}
{{- end -}}
{{- if not $v.tls.workerVolume -}}
{{- fail "tls.enabled needs tls.workerVolume: a volume giving each worker pod a certificate naming the pod (its node_id), e.g. cert-manager's CSI driver; see the chart's README" -}}
{{- end -}}
{{- end -}}
{{- range $name := list "clusterToken" "adminToken" -}}
{{- $s := index $v.secrets $name -}}
{{- if and $s.value $s.existingSecret -}}
{{- fail (printf "secrets.%s: set value or existingSecret, not both" $name) -}}
{{- end -}}
{{- if and $s.value (lt (len $s.value) 16) -}}
{{- fail (printf "secrets.%s.value is shorter than 16 characters" $name) -}}
{{- end -}}
{{- end -}}
{{- if and $v.secrets.clusterToken.value (eq $v.secrets.clusterToken.value $v.secrets.adminToken.value) -}}
{{- fail "secrets.adminToken.value is the cluster token: give it its own" -}}
{{- end -}}
{{- $vk := $v.secrets.vaultKey -}}
{{- if $vk.id -}}
{{- if and $vk.value $vk.existingSecret -}}
{{- fail "secrets.vaultKey: set value or existingSecret, not both" -}}
{{- end -}}
{{- if not (or $vk.value $vk.existingSecret) -}}
{{- fail "secrets.vaultKey.id is set without the key: set secrets.vaultKey.existingSecret (or value)" -}}
{{- end -}}
{{- else if or $vk.value $vk.existingSecret $vk.previous -}}
{{- fail "secrets.vaultKey has a key but no id: set secrets.vaultKey.id (stored beside every secret it seals)" -}}
{{- end -}}
{{- if and $v.config.smtp.username (not $v.secrets.smtpPassword.existingSecret) -}}
{{- fail "config.smtp.username is set without secrets.smtpPassword.existingSecret" -}}
{{- end -}}
{{- if and $v.workers.autoscaling.enabled (gt (int $v.workers.autoscaling.minReplicas) (int $v.workers.autoscaling.maxReplicas)) -}}
{{- fail "workers.autoscaling.minReplicas is above maxReplicas" -}}
{{- end -}}
{{- end -}}
