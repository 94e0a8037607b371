//! The worker pool: `js` and `process` workers and their lifecycle.
