"""Cloud inference through the providers' official SDKs. Empty until the cloud issue is built."""
