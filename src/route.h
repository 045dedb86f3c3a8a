/* route — SNI name to route: an exact name first, then a wildcard, then the
 * default route ("sni = *"). */
#ifndef SALLYPORT_ROUTE_H
#define SALLYPORT_ROUTE_H

#include <stddef.h>

#include "config.h"

/* Returns the route for `sni` (NULL when the client sent none), or NULL when
 * neither a name, a wildcard nor a default route matches. */
const struct cfg_route *route_lookup(const struct cfg_route *routes, size_t nroutes,
                                     const char *sni);

#endif
