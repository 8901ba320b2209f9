{{/* The control plane's name: its Service is what sidecars dial. */}}
{{- define "weft.name" -}}weft-control{{- end -}}

{{- define "weft.labels" -}}
app.kubernetes.io/name: weft-control
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/part-of: weft
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "weft.selector" -}}
app.kubernetes.io/name: weft-control
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* image "weft-proxy" → registry/weft-proxy:tag */}}
{{- define "weft.image" -}}
{{- printf "%s/%s:%s" .root.Values.image.registry .name (.root.Values.image.tag | default .root.Chart.AppVersion) -}}
{{- end -}}

{{/* The control plane's in-cluster gRPC URL. */}}
{{- define "weft.controlPlaneUrl" -}}
{{- printf "https://%s.%s.svc:15012" (include "weft.name" .) .Release.Namespace -}}
{{- end -}}

{{- define "weft.webhookSecret" -}}
{{- if eq .Values.injector.tls.mode "secret" -}}
{{- required "injector.tls.secretName is required with injector.tls.mode=secret" .Values.injector.tls.secretName -}}
{{- else -}}
weft-injector-tls
{{- end -}}
{{- end -}}

{{/* Checks values that cannot work together; fails the render with the reason. */}}
{{- define "weft.validate" -}}
{{- if not (has .Values.store.type (list "embedded" "etcd")) -}}
{{- fail (printf "store.type must be embedded or etcd, not %q" .Values.store.type) -}}
{{- end -}}
{{- if and (gt (int .Values.controlPlane.replicas) 1) (eq .Values.store.type "embedded") -}}
{{- fail "controlPlane.replicas > 1 needs store.type=etcd: the embedded store is one replica's file (see values-ha.yaml)" -}}
{{- end -}}
{{- if and (eq .Values.store.type "etcd") (empty .Values.store.etcd.endpoints) -}}
{{- fail "store.type=etcd needs store.etcd.endpoints" -}}
{{- end -}}
{{- if and (eq .Values.store.type "etcd") (empty .Values.store.etcd.caKeyEncryptionKeySecret) -}}
{{- fail "store.type=etcd needs store.etcd.caKeyEncryptionKeySecret: the CA keys in etcd are sealed with it" -}}
{{- end -}}
{{- if not (has .Values.ca.mode (list "generate" "secret")) -}}
{{- fail (printf "ca.mode must be generate or secret, not %q" .Values.ca.mode) -}}
{{- end -}}
{{- if and (eq .Values.ca.mode "secret") (empty .Values.ca.secretName) -}}
{{- fail "ca.mode=secret needs ca.secretName (a Secret with chain.pem and issuer-key.pem)" -}}
{{- end -}}
{{- if not (has .Values.controlPlane.antiAffinity (list "preferred" "required" "none")) -}}
{{- fail (printf "controlPlane.antiAffinity must be preferred, required or none, not %q" .Values.controlPlane.antiAffinity) -}}
{{- end -}}
{{- if not (has .Values.injector.failurePolicy (list "Ignore" "Fail")) -}}
{{- fail (printf "injector.failurePolicy must be Ignore or Fail, not %q" .Values.injector.failurePolicy) -}}
{{- end -}}
{{- if and (eq .Values.injector.tls.mode "secret") (empty .Values.injector.tls.caBundle) -}}
{{- fail "injector.tls.mode=secret needs injector.tls.caBundle (the PEM CA that signed the Secret's certificate)" -}}
{{- end -}}
{{- end -}}
