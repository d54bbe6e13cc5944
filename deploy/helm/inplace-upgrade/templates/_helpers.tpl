{{/*
Object names are fixed, not derived from the release name: the code refers to them (the Lease
inplace-upgrade-controller, the Secret inplace-upgrade-webhook-tls, the webhook configurations
and Service inplace-upgrade / inplace-upgrade-webhook), and they match deploy/ so a cluster
installed with kustomize can move to the chart. One release per cluster.
*/}}

{{/* The namespace the controller and webhook run in. */}}
{{- define "inplace-upgrade.namespace" -}}
{{- default .Release.Namespace .Values.namespace -}}
{{- end -}}

{{/* Labels on every object: deploy/base's part-of plus Helm's own (README lists them). */}}
{{- define "inplace-upgrade.labels" -}}
app.kubernetes.io/part-of: inplace-upgrade
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{/* The image reference: a digest wins over the tag; the tag defaults to appVersion. */}}
{{- define "inplace-upgrade.image" -}}
{{- if .Values.image.digest -}}
{{ .Values.image.repository }}@{{ .Values.image.digest }}
{{- else -}}
{{ .Values.image.repository }}:{{ default .Chart.AppVersion .Values.image.tag }}
{{- end -}}
{{- end -}}

{{/* selfManaged or certManager; anything else is refused with the allowed values. */}}
{{- define "inplace-upgrade.certificateMode" -}}
{{- $mode := .Values.webhook.certificates.mode -}}
{{- if not (has $mode (list "selfManaged" "certManager")) -}}
{{- fail (printf "webhook.certificates.mode must be selfManaged or certManager, not %q" $mode) -}}
{{- end -}}
{{- $mode -}}
{{- end -}}

{{/* Log settings both processes take (after the env each Deployment sets itself). */}}
{{- define "inplace-upgrade.logEnv" -}}
{{- if not (has .Values.logFormat (list "json" "plain")) -}}
{{- fail (printf "logFormat must be json or plain, not %q" .Values.logFormat) -}}
{{- end -}}
- name: INPLACE_UPGRADE_LOG_FORMAT
  value: {{ .Values.logFormat }}
{{- with .Values.logLevel }}
- name: INPLACE_UPGRADE_LOG_LEVEL
  value: {{ . | quote }}
{{- end }}
{{- end -}}

{{/* The pod-level settings both Deployments take from their values. */}}
{{- define "inplace-upgrade.podPlacement" -}}
{{- with .priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
{{- with .nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}
