# The example app: serves /www on :8080 until SIGTERM (which hecd-init passes on only after
# deregistering and draining).
trap 'echo "app: SIGTERM, bye"; exit 0' TERM
/bin/busybox httpd -f -p 8080 -h /www &
wait
