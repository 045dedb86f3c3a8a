#include <string.h>

#include "service.h"

static const struct service_info services[SERVICE_COUNT] = {
    [SERVICE_SUBMISSIONS] = {"submissions", PROTO_SMTP, TLS_IMPLICIT, 465},
    [SERVICE_SUBMISSION] = {"submission", PROTO_SMTP, TLS_STARTTLS, 587},
};

static const char *const flavour_names[] = {
    [TLS_PLAIN] = "plain",
    [TLS_IMPLICIT] = "implicit",
    [TLS_STARTTLS] = "starttls",
};

static const char *const proto_names[PROTO_COUNT] = {
    [PROTO_SMTP] = "smtp",
};

const struct service_info *service_info(enum service service)
{
    return &services[service];
}

int service_parse(const char *name, enum service *out)
{
    for (int i = 0; i < SERVICE_COUNT; i++) {
        if (strcmp(name, services[i].name) == 0) {
            *out = (enum service)i;
            return 0;
        }
    }
    return -1;
}

const char *tls_flavour_name(enum tls_flavour flavour)
{
    return flavour_names[flavour];
}

int tls_flavour_parse(const char *text, enum tls_flavour *out)
{
    for (size_t i = 0; i < sizeof flavour_names / sizeof flavour_names[0]; i++) {
        if (strcmp(text, flavour_names[i]) == 0) {
            *out = (enum tls_flavour)i;
            return 0;
        }
    }
    return -1;
}

const char *proto_name(enum proto proto)
{
    return proto_names[proto];
}
