# The images of `make images` (deploy/docker/images.sh), FROM scratch: no
# registry is needed, nothing is pulled. images.sh copies this file into a
# context holding root-IMAGE/ (passwd, group, /tmp, the static binaries)
# and user/ (the directories owned by the unprivileged user 10001; each is
# copied by name so that its parents stay root's) and builds one target
# per image. No shell, no libc: kms-ha here is built with
# CGO_ENABLED=0 and therefore has no PKCS#11 backend.

FROM scratch AS kms-ha
COPY root-kms-ha/ /
COPY --chown=10001:10001 user/var/lib/kms-ha /var/lib/kms-ha
ENV PATH=/usr/local/bin HOME=/var/lib/kms-ha
USER 10001:10001
WORKDIR /var/lib/kms-ha
VOLUME ["/var/lib/kms-ha"]
# Needs metrics.listen on 127.0.0.1:26661 or 0.0.0.0:26661 in kms.yaml.
HEALTHCHECK --interval=5s --timeout=4s --start-period=20s --retries=3 \
  CMD ["/usr/local/bin/kms-ha", "healthcheck", "--url", "http://127.0.0.1:26661/readyz"]
ENTRYPOINT ["/usr/local/bin/kms-ha"]
CMD ["start", "--home", "/var/lib/kms-ha"]

FROM scratch AS cometbft
COPY root-cometbft/ /
COPY --chown=10001:10001 user/cometbft /cometbft
ENV PATH=/usr/local/bin HOME=/cometbft CMTHOME=/cometbft
USER 10001:10001
WORKDIR /cometbft
VOLUME ["/cometbft"]
ENTRYPOINT ["/usr/local/bin/cometbft"]
CMD ["start"]

FROM scratch AS kms-ha-compose-init
COPY root-kms-ha-compose-init/ /
COPY --chown=10001:10001 user/compose /compose
ENV PATH=/usr/local/bin HOME=/compose
USER 10001:10001
WORKDIR /compose
ENTRYPOINT ["/usr/local/bin/compose-init"]
