package mqttapi

// SubscriberCount returns how many clients are subscribed to filters
// matching topic, so tests can wait for a subscription to be in place.
func SubscriberCount(b *Broker, topic string) int {
	return len(b.server.Topics.Subscribers(topic).Subscriptions)
}
