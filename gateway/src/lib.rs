//! The HTTP edge (axum): OpenAI-compatible API, datanet/job/adapter APIs, the
//! adapter-affinity router, admission control, auth, metrics and the web dashboard.
//! No model math here.
