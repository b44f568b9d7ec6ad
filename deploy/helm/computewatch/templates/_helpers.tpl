{{/* Names, labels and the image, shared by every template. */}}

{{- define "computewatch.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "computewatch.fullname" -}}
{{- default (printf "%s-%s" .Release.Name .Chart.Name) .Values.fullnameOverride | trunc 47 | trimSuffix "-" -}}
{{- end -}}

{{- define "computewatch.selectorLabels" -}}
app.kubernetes.io/name: {{ include "computewatch.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "computewatch.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | quote }}
{{ include "computewatch.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "computewatch.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{- define "computewatch.collectorAddress" -}}
{{- default (printf "%s-collector.%s.svc:%v" (include "computewatch.fullname" .) .Release.Namespace .Values.collector.grpcPort) .Values.agent.collectorAddress -}}
{{- end -}}

{{/* One collector probe in the PostgreSQL form: (list $ "service name").
Plain text: the kubelet's own gRPC probe. TLS: `computewatch collector health`
over the collector's TLS (kubelet gRPC probes cannot speak TLS), run as
`python -m computewatch.cli_health`, which skips loading the other commands. */}}
{{- define "computewatch.collectorProbe" -}}
{{- $root := index . 0 -}}
{{- $service := index . 1 -}}
{{- if $root.Values.tls.insecurePlaintext -}}
grpc:
  port: {{ $root.Values.collector.grpcPort }}
  service: {{ $service | quote }}
{{- else -}}
exec:
  command:
    - python
    - -m
    - computewatch.cli_health
    - --config
    - /etc/computewatch/collector.toml
    - --tls-ca
    - /etc/computewatch/tls/ca.crt
    - --timeout
    - "3"
    - --service
    - {{ $service | quote }}
timeoutSeconds: 5
{{- end -}}
{{- end -}}
