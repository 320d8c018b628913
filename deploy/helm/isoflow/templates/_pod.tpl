{{/* What coordinator and worker pods share. */}}

{{- define "isoflow.secretEnv" -}}
{{- $ := index . 0 -}}
{{- $ref := include "isoflow.secretRef" (list $ (index . 2)) | fromJson -}}
- name: {{ index . 1 }}
  valueFrom:
    secretKeyRef:
      name: {{ $ref.name }}
      key: {{ $ref.key }}
{{- end -}}

{{/* Environment of a pod: (list $ "coordinator"). */}}
{{- define "isoflow.env" -}}
{{- $ := index . 0 -}}
{{- $role := index . 1 -}}
{{- $v := $.Values -}}
- name: POD_NAME
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
- name: ISOFLOW_NODE_ID
  value: $(POD_NAME)
{{ include "isoflow.secretEnv" (list $ "ISOFLOW_CLUSTER_TOKEN" "clusterToken") }}
{{- if $v.etcd.auth.user }}
- name: ISOFLOW_ETCD_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ $v.etcd.auth.existingSecret }}
      key: {{ $v.etcd.auth.key }}
{{- end }}
{{- if eq $role "coordinator" }}
- name: ISOFLOW_ADVERTISE
  value: {{ printf "%s://$(POD_NAME).%s.%s.svc.%s:%d" (ternary "https" "http" $v.tls.enabled) (include "isoflow.headless" $) $.Release.Namespace $v.clusterDomain (int $v.ports.grpc) | quote }}
{{ include "isoflow.secretEnv" (list $ "ISOFLOW_ADMIN_TOKEN" "adminToken") }}
{{- if include "isoflow.vaultEnabled" $ }}
{{ include "isoflow.secretEnv" (list $ "ISOFLOW_VAULT_KEY" "vaultKey") }}
{{- range $i, $p := $v.secrets.vaultKey.previous }}
- name: {{ printf "ISOFLOW_VAULT_PREVIOUS_%d" $i }}
  valueFrom:
    secretKeyRef:
      name: {{ $p.existingSecret }}
      key: {{ $p.key | default "vault-key" }}
{{- end }}
{{- end }}
{{- if $v.secrets.apiTokens.existingSecret }}
- name: ISOFLOW_API_TOKENS
  valueFrom:
    secretKeyRef:
      name: {{ $v.secrets.apiTokens.existingSecret }}
      key: {{ $v.secrets.apiTokens.key }}
{{- end }}
{{- if $v.secrets.smtpPassword.existingSecret }}
- name: ISOFLOW_SMTP_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ $v.secrets.smtpPassword.existingSecret }}
      key: {{ $v.secrets.smtpPassword.key }}
{{- end }}
{{- end }}
{{- with (ternary $v.coordinator $v.workers (eq $role "coordinator")).extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* The container's mounts and the pod's volumes: (list $ "coordinator"). */}}
{{- define "isoflow.mounts" -}}
{{- $ := index . 0 -}}
{{- $role := index . 1 -}}
- name: config
  mountPath: /etc/isoflow/isoflow.toml
  subPath: isoflow.toml
  readOnly: true
- name: tmp
  mountPath: /tmp
{{- if eq $role "coordinator" }}
- name: data
  mountPath: /var/lib/isoflow
{{- end }}
{{- if $.Values.tls.enabled }}
- name: tls
  mountPath: /etc/isoflow/tls
  readOnly: true
{{- end }}
{{- if $.Values.etcd.tls.existingSecret }}
- name: etcd-tls
  mountPath: /etc/isoflow/etcd-tls
  readOnly: true
{{- end }}
{{- end -}}

{{- define "isoflow.volumes" -}}
{{- $ := index . 0 -}}
{{- $role := index . 1 -}}
- name: config
  configMap:
    name: {{ printf "%s-%s" (include "isoflow.fullname" $) $role }}
- name: tmp
  emptyDir:
    sizeLimit: {{ $.Values.tmpSizeLimit }}
{{- if $.Values.tls.enabled }}
- name: tls
{{- if eq $role "coordinator" }}
  secret:
    secretName: {{ $.Values.tls.coordinatorSecret }}
{{- else }}
{{ toYaml $.Values.tls.workerVolume | indent 2 }}
{{- end }}
{{- end }}
{{- if $.Values.etcd.tls.existingSecret }}
- name: etcd-tls
  secret:
    secretName: {{ $.Values.etcd.tls.existingSecret }}
{{- end }}
{{- end -}}

{{/* The isoflow container: (list $ "coordinator"). */}}
{{- define "isoflow.container" -}}
{{- $ := index . 0 -}}
{{- $role := index . 1 -}}
{{- $c := ternary $.Values.coordinator $.Values.workers (eq $role "coordinator") -}}
- name: isoflow
  image: {{ include "isoflow.image" $ | quote }}
  imagePullPolicy: {{ $.Values.image.pullPolicy }}
  args: ["serve", "--config", "/etc/isoflow/isoflow.toml"]
  env:
{{ include "isoflow.env" (list $ $role) | indent 4 }}
  ports:
{{- if eq $role "coordinator" }}
    - name: grpc
      containerPort: {{ $.Values.ports.grpc }}
{{- end }}
    - name: http
      containerPort: {{ $.Values.ports.http }}
{{- with $c.livenessProbe }}
  livenessProbe:
{{ toYaml . | indent 4 }}
{{- end }}
{{- with $c.readinessProbe }}
  readinessProbe:
{{ toYaml . | indent 4 }}
{{- end }}
{{- with $c.startupProbe }}
  startupProbe:
{{ toYaml . | indent 4 }}
{{- end }}
  resources:
{{ toYaml $c.resources | indent 4 }}
  securityContext:
{{ toYaml $.Values.securityContext | indent 4 }}
  volumeMounts:
{{ include "isoflow.mounts" (list $ $role) | indent 4 }}
{{- end -}}

{{/* The pod spec's common part: (list $ "coordinator"). */}}
{{- define "isoflow.podCommon" -}}
{{- $ := index . 0 -}}
{{- $role := index . 1 -}}
{{- $c := ternary $.Values.coordinator $.Values.workers (eq $role "coordinator") -}}
serviceAccountName: {{ include "isoflow.serviceAccountName" $ }}
automountServiceAccountToken: false
{{- with $.Values.imagePullSecrets }}
imagePullSecrets:
{{ toYaml . }}
{{- end }}
securityContext:
{{ toYaml $.Values.podSecurityContext | indent 2 }}
terminationGracePeriodSeconds: {{ $c.terminationGracePeriodSeconds }}
{{- with $c.nodeSelector }}
nodeSelector:
{{ toYaml . | indent 2 }}
{{- end }}
{{- with $c.tolerations }}
tolerations:
{{ toYaml . }}
{{- end }}
containers:
{{ include "isoflow.container" (list $ $role) | indent 2 }}
volumes:
{{ include "isoflow.volumes" (list $ $role) | indent 2 }}
{{- end -}}

{{/* Pod template annotations: a changed configuration rolls the pods. */}}
{{- define "isoflow.podAnnotations" -}}
{{- $ := index . 0 -}}
{{- $role := index . 1 -}}
checksum/config: {{ include "isoflow.config" (list $ $role) | sha256sum }}
{{- with (ternary $.Values.coordinator $.Values.workers (eq $role "coordinator")).podAnnotations }}
{{ toYaml . }}
{{- end }}
{{- end -}}
