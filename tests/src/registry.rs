//! A loopback OCI registry (Debian's `docker-registry`) for one test, and a
//! puller that fetches a Wasm module from it the way Istio's agent does.
