from execution_service.app import entry_point

entry_point()
