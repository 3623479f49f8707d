package httpapi

import (
	"github.com/gin-gonic/gin"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// routes mounts every route of the API (DESIGN.md, "Public interface").
func (s *server) routes(r *gin.Engine) {
	r.Use(s.observe, s.recoverPanics)

	// The check routes authenticate in their handlers (s.principal). gin
	// binds a route to the middleware in use when the route is registered,
	// so authenticate, added after them, guards every later route, the
	// extra routes and the NoRoute/NoMethod answers, but not these.
	r.GET("/v1/check", s.handleCheckGet())
	r.POST("/v1/check", s.handleCheckPost())
	r.POST("/v1/check/batch", s.handleCheckBatch())
	r.Use(s.authenticate)

	r.GET("/v1/contacts/:id", RequireScope("contacts:read"), s.handleContactGet())
	r.DELETE("/v1/contacts/:id", RequireScope("contacts:erase"), s.handleContactDelete())

	r.GET("/healthz", s.handleHealthz())
	r.HEAD("/healthz", s.handleHealthz())
	r.GET("/readyz", s.handleReadyz())
	r.HEAD("/readyz", s.handleReadyz())
	if s.gatherer != nil {
		r.GET("/metrics", gin.WrapH(promhttp.HandlerFor(s.gatherer, promhttp.HandlerOpts{})))
	}

	r.NoRoute(func(c *gin.Context) { writeError(c, errNoRoute) })
	r.NoMethod(func(c *gin.Context) { writeError(c, errNoMethod) })
}
