"""What runs inside every load-generator process and never imports TensorFlow: the Locust users, the open-loop
driver, the lean HTTP/1.1 and HTTP/2 clients, payload reading and answer checks, the samples recorder, the
server-metrics scraper and the distributed run's messages."""
