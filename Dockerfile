# pgproxy: `docker build -t pgproxy .` then
#   docker run -p 6432:6432 -v $PWD/pgproxy.yaml:/etc/pgproxy/pgproxy.yaml:ro pgproxy
# The config must listen on 0.0.0.0 inside the container.
FROM python:3.11-slim

RUN useradd --system --uid 10001 --home-dir /nonexistent --shell /usr/sbin/nologin pgproxy
WORKDIR /opt/pgproxy
COPY pyproject.toml README.md ./
COPY pgproxy ./pgproxy
RUN pip install --no-cache-dir . && rm -rf /opt/pgproxy/build

USER pgproxy
EXPOSE 6432
ENTRYPOINT ["pgproxy", "run"]
CMD ["--config", "/etc/pgproxy/pgproxy.yaml"]
