// Test fixture: fails at import time.
console.error("about to fail on purpose");
throw new Error("broken at import");
