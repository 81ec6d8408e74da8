{{/* Full name of the release's objects: "<release>-pacsflow" unless the release is already called so. */}}
{{- define "pacsflow.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "pacsflow.selectorLabels" -}}
app.kubernetes.io/name: pacsflow-operator
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "pacsflow.labels" -}}
{{ include "pacsflow.selectorLabels" . }}
app.kubernetes.io/component: operator
app.kubernetes.io/part-of: pacsflow
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "pacsflow.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "pacsflow.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "pacsflow.operatorImage" -}}
{{- printf "%s:%s" .Values.operator.image.repository (default .Chart.AppVersion .Values.operator.image.tag) -}}
{{- end -}}

{{- define "pacsflow.routerImage" -}}
{{- printf "%s:%s" .Values.router.image.repository (default .Chart.AppVersion .Values.router.image.tag) -}}
{{- end -}}
