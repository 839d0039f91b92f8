//! What Istio makes of Tollgate's `WasmPlugin`: the manifests users copy,
//! rendered, and the Envoy configuration Istio's control plane and agent
//! would give a sidecar for them.
