"""Privacy and security: find and replace personal data (pii, anonymize, scrub), encrypt files
at rest (crypto), check files against sha256 manifests (integrity), plant canaries (canaries),
train with differential privacy (dp) and measure what a trained model leaks (audit).

pii, anonymize and crypto know nothing about models: corpus preparation, checkpoints and
serving use them alike.
"""
