#include <string.h>

#include "route.h"
#include "tls.h"

enum match_kind { MATCH_EXACT, MATCH_WILDCARD, MATCH_DEFAULT, MATCH_KINDS };

static enum match_kind kind_of(const char *pattern)
{
    if (strcmp(pattern, "*") == 0)
        return MATCH_DEFAULT;
    return pattern[0] == '*' ? MATCH_WILDCARD : MATCH_EXACT;
}

const struct cfg_route *route_lookup(const struct cfg_route *routes, size_t nroutes,
                                     const char *sni)
{
    for (int kind = sni ? MATCH_EXACT : MATCH_DEFAULT; kind < MATCH_KINDS; kind++) {
        for (size_t i = 0; i < nroutes; i++) {
            for (size_t j = 0; j < routes[i].nsni; j++) {
                const char *pattern = routes[i].sni[j];
                if ((int)kind_of(pattern) != kind)
                    continue;
                if (kind == MATCH_DEFAULT || tls_name_matches(pattern, sni))
                    return &routes[i];
            }
        }
    }
    return NULL;
}
