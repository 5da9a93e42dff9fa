"""Privacy (DP-SGD), robustness, PII redaction and guards built on the core."""
