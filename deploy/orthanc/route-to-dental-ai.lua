-- Auto-routing of stable dental studies from Orthanc to the dental AI node.
--
-- When a study has been quiet for "StableAge" seconds, Orthanc calls OnStableStudy. We
-- send to the node (modality DentalAiRouting.Modality of orthanc.json) every instance of
-- the study that
--   * has one of the SOP classes in DentalAiRouting.SopClasses (camera videos and photos,
--     secondary captures, intra-oral and digital X-rays),
--   * did NOT come from the node itself (metadata RemoteAET differs from the node's AE
--     title) and is not in a series whose Manufacturer is DentalAiRouting.ResultManufacturer
--     (the node's results: SR, SEG, PR, burned-in SC, enhanced video), so there is no loop
--     when the results arrive and make the study stable again,
--   * was not already delivered (user metadata "DentalAiRouted", set when the store job
--     succeeds).
--
-- Delivery goes through the REST API ('/modalities/NAME/store', asynchronous job), not
-- SendToModality(): in Orthanc 1.10 SendToModality inside OnStableStudy fails with
-- "Unable to read attachment dicom of instance ...". A failed store job leaves its
-- instances unmarked; resubmit it from Orthanc Explorer (Jobs) or with
-- POST /jobs/{id}/resubmit, and they are marked once it succeeds.

local ROUTED_METADATA = 'DentalAiRouted'

-- Job ID -> list of Orthanc instance IDs it carries (lives as long as this Orthanc process).
local pendingJobs = {}

local function RoutingConfiguration()
  local config = GetOrthancConfiguration()
  local routing = config['DentalAiRouting'] or {}
  local modality = routing['Modality'] or 'dental-ai'
  local entry = (config['DicomModalities'] or {})[modality]
  if entry == nil then
    error('DentalAiRouting.Modality "' .. modality .. '" is not in DicomModalities')
  end
  -- A modality is either [ AET, host, port ] or { "AET" : ..., "Host" : ..., ... }.
  local nodeAet = entry['AET'] or entry[1]
  local sopClasses = {}
  for _, uid in ipairs(routing['SopClasses'] or {}) do
    sopClasses[uid] = true
  end
  return {
    modality = modality,
    nodeAet = nodeAet,
    resultManufacturer = routing['ResultManufacturer'] or 'Dental AI Node',
    sopClasses = sopClasses,
  }
end

local function InstanceMetadata(instanceId)
  -- '?expand' returns every metadata item as one object (Orthanc >= 1.9).
  return ParseJson(RestApiGet('/instances/' .. instanceId .. '/metadata?expand'))
end

local function InstancesToRoute(studyId, routing)
  local resultSeries = {}
  for _, series in ipairs(ParseJson(RestApiGet('/studies/' .. studyId .. '/series'))) do
    local manufacturer = series['MainDicomTags']['Manufacturer'] or ''
    if manufacturer == routing.resultManufacturer then
      resultSeries[series['ID']] = true
    end
  end
  local selected = {}
  local skipped = { results = 0, classes = 0, routed = 0 }
  for _, instance in ipairs(ParseJson(RestApiGet('/studies/' .. studyId .. '/instances'))) do
    local metadata = InstanceMetadata(instance['ID'])
    local sopClass = metadata['SopClassUid'] or ''
    if resultSeries[instance['ParentSeries']] or metadata['RemoteAET'] == routing.nodeAet then
      skipped.results = skipped.results + 1
    elseif not routing.sopClasses[sopClass] then
      skipped.classes = skipped.classes + 1
    elseif metadata[ROUTED_METADATA] ~= nil then
      skipped.routed = skipped.routed + 1
    else
      table.insert(selected, instance['ID'])
    end
  end
  return selected, skipped
end

function OnStableStudy(studyId, tags, metadata)
  local routing = RoutingConfiguration()
  local selected, skipped = InstancesToRoute(studyId, routing)
  if #selected == 0 then
    print('dental-ai routing: study ' .. studyId .. ': nothing to send (' ..
          skipped.results .. ' node results, ' .. skipped.classes .. ' other classes, ' ..
          skipped.routed .. ' already sent)')
    return
  end
  local request = { Resources = selected, Synchronous = false }
  local answer = ParseJson(RestApiPost('/modalities/' .. routing.modality .. '/store',
                                       DumpJson(request, true)))
  pendingJobs[answer['ID']] = selected
  print('dental-ai routing: study ' .. studyId .. ': ' .. #selected ..
        ' instances sent to ' .. routing.modality .. ' in job ' .. answer['ID'])
end

function OnJobSuccess(jobId)
  local instances = pendingJobs[jobId]
  if instances == nil then
    return
  end
  for _, instanceId in ipairs(instances) do
    RestApiPut('/instances/' .. instanceId .. '/metadata/' .. ROUTED_METADATA, '1')
  end
  pendingJobs[jobId] = nil
  print('dental-ai routing: job ' .. jobId .. ' delivered ' .. #instances .. ' instances')
end

function OnJobFailure(jobId)
  local instances = pendingJobs[jobId]
  if instances ~= nil then
    print('dental-ai routing: job ' .. jobId .. ' FAILED (' .. #instances ..
          ' instances); resubmit it with POST /jobs/' .. jobId .. '/resubmit')
  end
end
