# Sourced by the Dockerfiles' install steps (POSIX sh). Applies the optional BuildKit
# secrets of `docker build`, which are mounted for that one step and never stored in a layer:
#   --secret id=ca,src=FILE        extra CA certificate(s), PEM, e.g. a TLS-intercepting proxy's;
#                                  added to the base image's CA bundle for pip and apt
#   --secret id=pipconf,src=FILE   a pip.conf (index-url, extra-index-url, trusted-host, ...)
# The combined bundle is written to /run/ct-triage-build (a tmpfs of the step), not the image.
if [ -s /run/secrets/ca ]; then
  mkdir -p /run/ct-triage-build
  cat /etc/ssl/certs/ca-certificates.crt /run/secrets/ca >/run/ct-triage-build/ca.pem 2>/dev/null \
    || cat /run/secrets/ca >/run/ct-triage-build/ca.pem
  export PIP_CERT=/run/ct-triage-build/ca.pem
  export SSL_CERT_FILE=/run/ct-triage-build/ca.pem
  export APT_CA_OPT="-o Acquire::https::CAInfo=/run/ct-triage-build/ca.pem"
fi
if [ -s /run/secrets/pipconf ]; then
  export PIP_CONFIG_FILE=/run/secrets/pipconf
fi
