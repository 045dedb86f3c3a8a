#!/bin/sh
# Runs sallyport in the foreground with a self-signed certificate, a demo user
# and the embedded mailbox:
#   127.0.0.1:1465  submissions (implicit TLS), terminate
#   127.0.0.1:1587  submission (STARTTLS), terminate
#   mail lands in ./demo/mail (a Maildir); user "demo", password "demo".
# DEMO_SUBMISSIONS_PORT, DEMO_SUBMISSION_PORT and DEMO_MAILBOX_PORT move the
# three ports (the tests run the demo on free ones).
set -eu
cd "$(dirname "$0")/.."
smtps_port=${DEMO_SUBMISSIONS_PORT:-1465}
smtp_port=${DEMO_SUBMISSION_PORT:-1587}
mailbox_port=${DEMO_MAILBOX_PORT:-2525}
mkdir -p demo
if [ ! -f demo/cert.pem ] || [ ! -f demo/key.pem ]; then
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 365 \
        -subj "/CN=localhost" -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" \
        -keyout demo/key.pem -out demo/cert.pem 2>/dev/null
fi
if [ ! -f demo/users ]; then
    printf 'demo:%s\n' "$(openssl passwd -6 demo)" >demo/users
fi
cat >demo/sallyport.conf <<CONF
; sallyport demo: two terminate listeners in front of the embedded mailbox.
[global]
log_level = info

[certificate demo]
cert = demo/cert.pem
key  = demo/key.pem

[listener submissions]
address  = 127.0.0.1:$smtps_port
hostname = localhost

[listener submission]
address  = 127.0.0.1:$smtp_port
hostname = localhost

[mailbox demo]
address  = 127.0.0.1:$mailbox_port
maildir  = demo/mail
users    = demo/users
hostname = localhost

[route demo]
sni     = *
backend = demo
CONF
cat <<MSG
sallyport demo: submissions on 127.0.0.1:$smtps_port (implicit TLS), submission on
127.0.0.1:$smtp_port (STARTTLS); user demo, password demo; mail goes to ./demo/mail.
Send a message from another terminal:

  printf 'Subject: hello\r\n\r\nHello through sallyport.\r\n' | curl -sS --url smtps://localhost:$smtps_port --cacert demo/cert.pem --user demo:demo --mail-from demo@localhost --mail-rcpt demo@localhost --upload-file -

Press Ctrl-C to stop.
MSG
exec ./sallyport -c demo/sallyport.conf
