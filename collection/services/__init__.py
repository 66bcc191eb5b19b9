from collection.services.ingest import IngestResult, Rejection, SampleBatch, ingest_samples, samples_ingested

__all__ = ["IngestResult", "Rejection", "SampleBatch", "ingest_samples", "samples_ingested"]
