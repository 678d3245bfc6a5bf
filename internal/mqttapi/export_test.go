package mqttapi

import "net"

// SubscriberCount returns how many clients are subscribed to filters
// matching topic in tenant tenantID's namespace, so tests can wait for a
// subscription to be in place.
func SubscriberCount(b *Broker, tenantID int64, topic string) int {
	return len(b.server.Topics.Subscribers(namespace(tenantID) + topic).Subscriptions)
}

// UseListener makes b serve ln instead of listening on Config.Addr; call it
// before Open.
func UseListener(b *Broker, ln net.Listener) {
	b.listen = func(string, string) (net.Listener, error) { return ln, nil }
}
