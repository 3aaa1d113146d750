"""The actor side: model, pooling, head, batching and the per-actor Kafka loop.

Everything here is a plain class usable without Ray; ``workers.actor`` is the only module that
touches Ray, and only to wrap ``ClassifierLoop`` in an actor.
"""
