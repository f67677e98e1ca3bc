# autodeployer as a container: `docker build -t autodeployer .`
#   docker run --init -p 5000:5000 -v autodeployer-state:/var/lib/autodeployer \
#     -e GIT_URL=https://github.com/acme/sesam-config.git -e GITHUB_TOKEN -e JWT \
#     -e SESAM_API_URL=https://datahub-1234abcd.sesam.cloud/api autodeployer
# (`--init` reaps git's helper processes; the service itself handles SIGTERM and exits cleanly.)
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# git does the fetching (https, ssh, git://); ca-certificates verifies TLS; openssh-client serves GIT_SSH_KEY
# (and ssh-keygen checks SSH commit signatures); gnupg checks GPG commit signatures (VERIFY_COMMITS).
RUN apt-get update \
 && apt-get install -y --no-install-recommends git ca-certificates openssh-client gnupg \
 && rm -rf /var/lib/apt/lists/*

RUN groupadd --system --gid 10001 autodeployer \
 && useradd --system --uid 10001 --gid autodeployer --create-home --home-dir /home/autodeployer \
      --shell /usr/sbin/nologin autodeployer \
 && mkdir -p /var/lib/autodeployer \
 && chown autodeployer:autodeployer /var/lib/autodeployer \
 && chmod 0700 /var/lib/autodeployer

# LICENSE: pyproject.toml names it as the license file, and the wheel carries it into the image.
COPY pyproject.toml README.md LICENSE /tmp/build/
COPY src /tmp/build/src
RUN pip install /tmp/build && rm -rf /tmp/build

ENV STATE_DIR=/var/lib/autodeployer \
    HOST=0.0.0.0 \
    PORT=5000
VOLUME ["/var/lib/autodeployer"]
EXPOSE 5000
WORKDIR /home/autodeployer
USER 10001:10001

# python, not curl (the slim image has none); any answer other than 2xx, or none in 4 s, is unhealthy.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('PORT', '5000'), timeout=4)"]

ENTRYPOINT ["autodeployer"]
CMD ["run"]
