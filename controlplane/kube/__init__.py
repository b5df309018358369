"""Kubernetes integration: node discovery through the official ``kubernetes`` client.

``client`` builds the API client (in-cluster or from a kubeconfig), ``mirror`` turns one
Kubernetes Node into writes to a Flotilla Node, and ``nodes`` lists and watches. See
docs/kubernetes.md.
"""
