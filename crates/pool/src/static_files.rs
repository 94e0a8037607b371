//! The `static` worker kind: files served by the runtime itself.
