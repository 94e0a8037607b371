//! App discovery in the worker dirs and version resolution (buntime.md §2.1).
