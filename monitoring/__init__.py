"""Shelfcast monitoring: drift analysis and the Fluentd/Elasticsearch/Kibana configuration."""
